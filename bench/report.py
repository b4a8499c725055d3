"""The results table: printed with rich, and kept as markdown in docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.harness import Result

HEADERS = ("benchmark", "ours", "comparison", "ratio", "target", "result", "notes")

METHOD = """\
## How it is measured

Everything runs on this machine, over 127.0.0.1, in separate processes: one redis-server
(AOF on, `appendfsync everysec`, the same for every variant), the file server, the receivers,
the workers and the load generators. `python -m bench --quick` runs a tiny configuration in
seconds (the smoke test does); `--strict` exits 1 when a target is missed; `--only` picks
benchmarks.

1. **Receiver throughput.** wrk (1 thread, 32 connections) POSTs one HMAC-signed case of
   5.4 KiB (20 items, 10 with image URLs, accented and non-Latin text) to three servers, each
   a single process with the access log off, all writing to the same Redis:
   casefetch (`casefetch receiver`), (a) aiohttp reading the body and doing one redis.asyncio
   `RPUSH` (`bench/servers.py bare`) and (b) aiohttp verifying the HMAC, parsing the JSON and
   calling Celery's `send_task` in a thread pool (`bench/servers.py celery`). After a 1 s
   warm-up each, five rounds of 5 s run the three in turn, the order rotating every round;
   the table gives the medians of the rounds. The queues and casefetch's inbox are emptied
   before every round (no worker drains them here), so each variant starts from the same
   Redis. Every answer must be a 2xx. The details also
   give the server's CPU time per request, which other load on the machine disturbs less
   than requests per second.
2. **Fetch throughput.** 50 cases, each one 2 MiB PDF and ten 300 KiB JPEGs (251 MiB), served
   from memory by `bench/fileserver.py` (a threaded HTTP/1.1 server). casefetch: the 50
   webhooks go to the receiver, two `casefetch worker` processes (8 threads each) fetch;
   timed from the first webhook sent to the last manifest `complete`. curl: the same URLs
   with `curl --parallel --parallel-max 16` (2 x 8), then every file and the folder fsynced,
   since casefetch fsyncs a file and its folder before it calls it stored. Five rounds
   alternate which goes first; medians. Between runs nothing is deleted (each run's files are
   moved aside until the benchmarks end: on this ext4 without a journal, deleting hundreds of
   files makes the next minute's file creations skip them one by one), and no page cache is
   left behind (casefetch's workers drop a file's pages once it is durable; curl's are
   dropped after its timed run). An information row repeats the comparison with 8 cases of
   one 32 MiB PDF each: few files, so what remains is the cost per byte.
3. **Memory.** One case whose PDF is 1 GiB (streamed by the file server, never held) plus
   three images, one worker process; its process tree's RSS sampled every 20 ms from before
   the webhook to the complete manifest. Then `ARCHIVE_DIR/.tmp` must be empty.
4. **Growth.** Cases of 1, 10, 100 and 1,000 items (each with a 2 KiB image, plus a 16 KiB
   PDF), each timed alone from webhook to complete manifest on the two workers; two rounds,
   medians. A case of 10 items pays the fixed cost of a case (webhook, ingest, PDF, final
   manifest) over 10 items, one of 1,000 over 1,000: flat or falling time per item means
   no step grows faster than the number of items. Target: 1,000 items at most 1.5 times
   10 items' time per item; the second row compares 1,000 with 100 items.
5. **Payload size.** A case of exactly 5 MiB (RECEIVER_MAX_BODY_BYTES) with 20 images is
   sent, must be answered 202 and archived with `case.json` byte for byte the body. Then a
   receiver of its own serves 10 warm-up requests of that body, N = 20 more, then 20 more,
   one at a time, its RSS sampled every 5 ms; the peak over the second 20 must be within
   10 % of the peak over the first 20. (RSS between requests only says when the allocator
   returned memory, and the peak of concurrent requests depends on how they overlap; the
   peak of one request at a time is steady, and it is what grows if requests leak.)
"""


FINDINGS = """\
## What the profiles showed, and what changed (issue 6)

Measured on the shared 2-core machine while other test suites ran, so the numbers moved by
±20 % from run to run; each before/after pair below was measured side by side.

**Receiver** (py-spy on the receiver under wrk; cProfile of the same load compared function by
function with the bare handler; CPU time of the server process per request):

- Before: 0.50x the bare handler's req/s in the first run (1,520 against 3,016).
- `task_message` took 70 µs a request: `json.dumps` scanning the 7 KiB base64 string (19 µs)
  and the body (30 µs). Now orjson (json only for what orjson refuses: a header holding a lone
  surrogate): 17 µs. aiohttp's header names are `multidict.istr`, which orjson refuses as
  keys, so `safe_headers` hands over plain `str`.
- The JSON-object check: `json.loads` 30 µs, now `orjson.loads` 12 µs; what orjson refuses
  gets json's verdict, so exactly the same bodies are accepted as before.
- redis-py's asyncio client was most of what is left of a request, in the bare handler too:
  a pool checkout under an asyncio lock, a retry wrapper, a timeout per read, one `send` per
  command. The receiver now writes through `receiver/redis_pipe.py`: one connection, the
  LPUSHes of one event-loop turn leave in one write, replies (in order) go to their callers,
  and each request still waits for its own reply before its 202. TLS, Unix-socket or
  parameterised REDIS_URLs keep redis-py.
- Smaller: ids and timestamps formatted directly, labelled request counters cached, the 202
  body built as bytes.
- Side by side, old receiver / new receiver / bare handler, five rounds of 5 s:
  2,013 / 4,053 / 4,844 req/s (0.42x to 0.84x), p99 34 / 22 / 18 ms (1.90x to 1.21x), CPU
  per request 451 / 217 / 182 µs. Over the day's full runs the new receiver made 0.84x to
  0.96x the bare handler's req/s, with a p99 of 0.6x to 1.4x its own.

**Worker** (py-spy `--gil` on both workers during the fetch benchmark; CPU time per process):

- The two workers are CPU-bound: about 4 CPU-seconds for 550 files, 7 ms per file, where
  curl spends about 0.3 s in all; more threads per worker do not help (4 threads did as well
  as 8 or 16). Hashing and copying bytes are a small part.
- Per file, of the time holding the GIL: Celery and kombu (consume, trace, ack) about a
  third; the bookkeeping's seven Redis round trips 15 %; the urllib3 request 10 %;
  the durable write (temporary file, fsync, rename, fsync of the folder) about 0.75 ms of CPU
  even for a 2 KiB file; publishing the downloads with `send_task` 10 %.
- Changed: the ingest publishes each download with one LPUSH of the same protocol message the
  receiver writes (no Celery publisher); files are read in 256 KiB chunks instead of 1 MiB
  (urllib3 spends less CPU per byte, and the worker holds less). Effect: 75 to 80 MiB/s
  against curl's 363, 0.21x to 0.22x.
- Not reached: 0.7x curl on 300 KiB files needs the per-file cost cut about three times,
  which a Celery task per file with per-file durability (two fsyncs) in Python does not
  allow. Celery alone costs about 2 ms of CPU per task here (2,000 tasks that return at once
  after one Redis GET: 1.96 ms each, 405 tasks/s per worker process; 1.80 ms with the
  per-task INFO log lines off), and a download adds about 2.7 ms (measured in-process
  without Celery): 600 tasks is about 2.8 CPU-seconds, against curl's 0.8 s of wall time.
  The cost per byte is not the problem: with eight 32 MiB files casefetch reaches
  0.84x to 0.94x curl (the information row), and the 1 GiB PDF is stored at about
  300 MiB/s. Ways forward, not done here: fetch a case's images in one task with a thread
  pool, or hand the byte moving to a C client (pycurl), keeping the per-file verification
  and the atomic rename.
- In the harness: the first file server left Nagle's algorithm on, so a file smaller than a
  TCP segment waited for the client's delayed ACK of the headers (40 ms a file, in the
  growth benchmark). A single download profiled in-process showed it (43 ms in `recv_into`
  for a 2 KiB file); the server now sets TCP_NODELAY, as real file hosts do.

### Since then: what the other issues cost the receiver (measured 2026-11-29, 22:30 UTC)

After this work the receiver gained three things that each cost time per request, and the
receiver row fell from 0.84-0.88x to 0.55-0.59x of the bare handler. Measured one at a
time with `python -m bench --only receiver` on a quiet machine:

| receiver variant | req/s vs (a) |
|---|---|
| as merged (JSON log line per accepted webhook, inbox script, input hardening) | 0.55x |
| without the per-request log line | 0.67x |
| without the log line and without the inbox (plain `LPUSH`) | 0.73x |

The log line is what issue 7 asks for (one line per delivery); it now goes through orjson
(0.59x in the full run above). The inbox (a Lua script that also keeps the message until
a worker has finished it) closes a loss window in kombu's Redis transport; the remaining
gap is the hardening of issue 5 and noise between runs. Neither guarantee was traded for
speed. The second pass below took the receiver back to about 0.8x.

### Second pass on the receiver (issue 6, benchmark 1; 2026-11-29, 23:15-00:10 UTC)

Profiled first: py-spy (200 Hz) on the receiver and on the bare handler in the same run under
the same wrk load, samples turned into µs per request; CPU time per request of the server
and of redis-server from psutil; the suspects timed alone with `timeit`. The machine was
shared with another benchmarking session throughout, so CPU µs per request moved by ±20 %
from run to run; each comparison below was made in one run or in alternating runs.

What the profile showed (as merged, 0.51-0.59x of (a)):

- The receiver spent about twice the bare handler's CPU per request (367-431 µs against
  175-207 µs in the same runs); redis-server spent 80-100 µs per request for it, against
  30-45 µs for (a)'s RPUSH.
- The `delivery accepted` line through `logging`: about 23 µs (a LogRecord, the handler
  chain, `datetime` formatting) and one `write` system call per line.
- prometheus-client: a lock and a dictionary lookup per update, four updates per request,
  and the counting middleware, which aiohttp runs through two more coroutines.
- Two `asyncio.timeout()` per request (reading the body, waiting for Redis): 7-8 µs each,
  most of it scheduling and cancelling a timer.
- `orjson.loads` built the whole case (20-40 µs on this CPU) only to learn it is an object
  and read its cfRef.
- `task_message`: 28-30 µs, of which the envelope's `orjson.dumps` scanned the 7 KiB of
  base64 once more; `strftime` for receivedAt on every request.
- Not a factor: the garbage collector (after `gc.freeze()`, 7 young collections, 0.9 ms in
  all, over 27,000 requests; thresholds left as they are); EVALSHA instead of EVAL (no
  difference in Redis CPU).
- In Redis, the inbox script: the message (8.4 KiB) copied into Lua and back for each of
  LPUSH and HSET. The same three writes in MULTI/EXEC cost Redis 53-61 µs per request
  against EVAL's 68-82 µs (30,000 writes, four alternating rounds).

What changed (the guarantees are the same: 202 only after Redis acknowledged the write, the
inbox, a stock Celery protocol-2 message, every auth and input check, one line per
delivery with deliveryId and cfRef, the same /metrics):

- The log line is formatted directly with orjson (same fields and format as
  `JsonFormatter`) and written by the event loop in batches, at most every 50 ms or 64 KiB;
  the last ones on shutdown (`BatchedLines` in `casefetch/logs.py`). When something else
  listens on the logger (a terminal, a test's capture) it goes through `logging` as before.
- Metrics are plain ints, turned into Prometheus families by a custom collector when
  /metrics is scraped; the routes are counted by a wrapper instead of a middleware.
- No timer for a body that is already all in (the usual case); the pipe keeps one watchdog
  timer per connection instead of one Timeout per command. The body is taken from aiohttp's
  buffer in one copy and decoded once.
- The JSON check is msgspec decoding only `cfRef` and skipping the rest (4-6 µs); what
  msgspec does not refuse but json does (invalid UTF-8, integers longer than `int()` takes)
  and anything msgspec refuses still gets json's verdict, so the same bodies are accepted
  (tested against json on edge cases and 3,000 mutated cases).
- The Celery envelope is serialised once per task and queue, and each message is pieced
  together around its id, delivery tag and body; `strftime` once a second; one
  `hmac.digest` call.
- The enqueue is a MULTI/EXEC of LPUSH, HSET and ZADD through the pipe (the same writes as
  the script, which redis-py and the worker keep; a test compares what both leave in Redis).

Side by side, `python -m bench --only receiver` (five rounds of 5 s, medians), before and
after alternating:

| receiver | req/s vs (a) | p99 vs (a) | CPU µs/request, ours / (a) |
|---|---|---|---|
| as merged (5ced221), three runs | 0.52x, 0.51x, 0.58x | 1.42x, 1.86x, 1.47x | 399-422 / 227-237 |
| all but MULTI/EXEC, five runs | 0.63x-0.79x | 1.11x-1.28x | 252-298 / 185-245 |
| now, six runs | 0.68x-0.87x, median 0.78x | 0.99x-1.86x, median 1.18x | 254-288 / 188-268 |

Redis CPU per request for the receiver fell from 80-100 µs to 59 µs in the one run that
measured it ((a): 36 µs). The six runs of the code as it is (the last two after the 202's
header change), in order: 0.81x, 0.74x, 0.87x, 0.83x, 0.68x, 0.71x of (a)'s req/s, p99
1.14x, 1.13x, 0.99x, 1.21x, 1.86x, 1.39x. So the req/s target (>= 0.8x) was met in three
runs and the p99 target (<= 1.5x) in five. The server now spends 1.07-1.35x the bare
handler's CPU per request; the rest of the gap is Redis's share of the two cores. What
is left of the server's extra is what the bare handler does not do: the HMAC over the body
(about 15 µs), the JSON check, the Celery message (orjson escaping the body, then base64:
about 35 µs), the transaction and its 8.4 KiB (against 5.4 KiB) written to Redis, the ids
and the log line. Not done: a smaller message (the body is stored twice, in the queue and
in the inbox, and base64 makes it a third larger); uvloop (it would have to run under (a) too).

### Second pass on the worker (issue 6, benchmark 2; 2026-11-29, 23:15-00:05 UTC)

Profiled with py-spy `--gil` on both workers, yappi CPU profiles of the download path in one
process, CPU seconds per process from psutil. The machine was shared with another
benchmarking session, so every figure below is from runs alternated side by side, before =
`5ced221`, after = the pass:

- What a file costs at the least, in Python: the same 550 files fetched by a bare loop
  (urllib3, sha256, write, fsync; 8 threads, one process) cost 1.25 ms of user and 0.6 ms of
  system CPU each, about 1.05 CPU-seconds for the benchmark's 246 MiB. The two workers spent
  about 2.7 (5 ms a file): 1.7 CPU-seconds of overhead, the thing to cut.
- Where it went, per file: three Redis round trips (claim script, intent HSET, record
  script; redis-py costs 90 to 210 µs of CPU per command here), a folder fsync, the temporary
  file (mkstemp, two mkdir calls); per case: two Celery tasks (ingest, then the download
  batch; Celery and kombu about 2 ms each), the ingest itself (3.8 ms: marshmallow a third,
  two locks, four fsyncs) and the settle. Log lines are not the problem: 25 to 30 µs each
  (py-spy `--gil` on the loaded machine over-attributed them). The urllib3 pool did not
  discard connections in this branch (maxsize 16 for 8 threads: 8 connections for 1,100
  requests); its size now follows the worker's concurrency, so a larger `--concurrency`
  does not start discarding them.
- Changed:
  - one script claims all the files of a download message (stale, done, busy or claimed,
    with the dead worker's intent) in one round trip;
  - a fetched file is *staged*: verified, fsynced, not yet under its name; the files of a
    batch that finished are put in place together, when the last is done or every 0.5 s:
    one HSET notes their intents, then the renames (a `storing` line before each), one
    fsync per folder, then one script records them all and releases their locks. Crash
    semantics per file are unchanged: the intent is in Redis before the rename, the folder
    is fsynced before the record, a file renamed into place is adopted by the next worker;
    a file verified but not yet renamed when a worker dies is fetched again;
  - the ingest task of a worker that also consumes the download queue fetches the case's
    first batch itself (all the files of a case of up to 16): one Celery task per case
    instead of two; ingest-only workers (the compose file's `worker-ingest`) queue it;
  - manifests written with orjson (the same bytes), temporary files created with
    `os.open(O_EXCL)`, folders made only when a rename finds them missing.
- Side by side, `python -m bench --only fetch`, four runs each, alternated (ours / curl,
  medians of three rounds):

  | run | before | ratio | after | ratio |
  |---|---|---|---|---|
  | 1 | 104 / 316 MiB/s | 0.33x | 162 / 325 MiB/s | 0.50x |
  | 2 | 124 / 287 MiB/s | 0.43x | 145 / 284 MiB/s | 0.51x |
  | 3 | 131 / 337 MiB/s | 0.39x | 137 / 270 MiB/s | 0.51x |
  | 4 | 105 / 291 MiB/s | 0.36x | 150 / 271 MiB/s | 0.55x |
  | median | 115 MiB/s | 0.38x | 148 MiB/s | 0.51x |

  Two more runs of the branch on its own: 0.62x (163 / 263) and 0.52x (171 / 330). The
  8 x 32 MiB information row: 0.73x to 0.98x before, 0.67x to 0.96x after (per-byte cost,
  unchanged). CPU of the two workers for the 550 files, side by side (user and system time
  of both processes, medians of six rounds each): 2.67 CPU-seconds before, 2.00 after (4.9
  and 3.6 ms a file); Redis's own CPU 0.16 and 0.09 s; the 50 cases archived in 1.9 and
  1.4 s.
- Threads: with 4 threads per worker instead of 8 (curl at `--parallel-max 8` to match),
  the two workers used 1.7 CPU-seconds instead of 2.2 for the same files (less GIL
  contention), and `--only fetch` gave 0.64x and 0.49x in two runs: too noisy to call, and
  real downloads from remote hosts are latency-bound and want the threads, so the default
  stays 8. On a host where the workers are CPU-bound, more processes with fewer threads
  each is the better shape.
- Not reached: 0.7x. curl moves the 246 MiB in 0.6 to 0.9 s of wall time on the two cores it
  shares with the file server; the bare Python loop above needs 1.05 CPU-seconds on its own,
  so 0.7x leaves the workers almost nothing for Celery, Redis, validation and manifests.
  What remains above that loop, about 0.4 CPU-seconds per worker: the ingest (validation,
  locks, case.json and manifest with their fsyncs), Celery's consume/ack, the settle, and the
  per-file Python around the bytes (staging, commit, metrics, thread hand-offs; GIL
  contention between 16 threads per process). Ways forward, not done: a C client for the
  byte path (pycurl) keeping the verification and the staged commit; cheaper validation
  (marshmallow is a third of an ingest); one lock instead of two per ingest.

### Both passes merged (2026-11-30, 00:15-00:45 UTC, nothing else running)

- Receiver, two full runs and five `--only receiver` runs of the merged code: req/s
  0.79x, 0.64x (full runs), 0.61x, 0.71x, 0.89x, 0.73x, 0.72x of (a): median 0.72x, the
  target met once in seven; p99 1.19x, 1.27x, 1.51x, 1.37x, 1.07x, 1.32x, 1.19x: median
  1.27x, met six times in seven. CPU per request of the server process: 261 µs against
  (a)'s 212 µs (1.23x); (a)'s own req/s moved from 3,772 to 5,362 between runs on an idle
  machine, which is the noise these ratios carry.
- The bench left casefetch's inbox growing across rounds (8.4 KiB a request, about 700 MiB
  by the last round, with the AOF rewrites that brings); it is now emptied with the queues
  before each round.
- Fetch, the two full runs: 0.46x and 0.50x of curl (159 and 166 MiB/s); the 8 x 32 MiB
  row 0.95x and 1.13x.

### Third pass: the payload written to Redis once (2026-11-30, 01:00-01:40 UTC)

- What was left: the server's CPU per request was already within 1.1-1.2x of (a)'s
  (160 against 141 µs in four alternated runs), yet its req/s stayed at 0.81-0.83x: Redis
  spent 37 µs a request for casefetch against 16 µs for (a) (`INFO cpu` around each run),
  and Redis shares the second core with wrk. The transaction wrote the 8.4 KiB message
  twice (queue and inbox), the body base64-encoded inside it: 17 KiB a request to Redis
  and its AOF against (a)'s 5.4 KiB.
- Changed: the inbox keeps the delivery itself (5.6 KiB, JSON, no base64) and the queued
  Celery message carries only `{deliveryId, receivedAt}` (about 1 KiB); the ingest task
  reads the delivery from the inbox. Still one MULTI/EXEC, acknowledged before the 202.
- Result, six alternated 3 s rounds: 0.95x of (a)'s req/s (was 0.83x), Redis 23 µs a
  request against (a)'s 18 µs, p99 11 ms against 10.5 ms. Two `--only receiver` runs:
  req/s 0.96x and 0.99x, p99 0.94x and 1.03x.

### Third and fourth passes on the worker (2026-11-30, 00:58-02:25 UTC)

Two passes by two engineers one after the other, each figure from runs alternated side by
side on the shared machine (other sessions ran tests outside the benchmark lock).

- The profile (psutil CPU of every process, perf, py-spy `--gil`): a round of 550 files
  costs about 1.9 CPU-seconds and keeps both cores about 90 % busy from the first webhook
  to the last manifest, with no idle gap; the two workers share the cases evenly and end
  within 50 ms of each other; the 0.5 s group commit never waits (a case's files finish
  together). The workers take 1.4-1.7 CPU-s (Python 0.67-0.73, sha256 0.17-0.19, inode
  allocation 0.07-0.28, fsync 0.08-0.11, thread hand-offs 0.07-0.09), the file server
  0.17-0.21, Redis 0.06, the receiver 0.03-0.05, the bench's own process 0.04-0.07. curl
  needs about 0.25 CPU-s for the same files (and does not hash them), plus 0.18 for the
  fsyncs. Python time by area: HTTP request and header parsing 25 %, Celery/kombu's consumer
  loop 11 %, ingest 12 %, settle 9 %, commit 9 %, the body loop 7-10 %.
- Merged: the body of a plain (identity) response is read with http.client's `readinto`
  into one 256 KiB buffer per thread (urllib3's `stream` allocated a fresh chunk per read
  and copied it twice; encoded bodies still go through urllib3's decoders and their
  limits): the 8 x 32 MiB row went from 0.59x to 1.05x in the same runs. Manifests and Redis
  entries parsed and written with orjson (settle parsed the manifest twice with json).
  marshmallow warmed up when a worker starts (its URL expression is built on first use,
  unlocked: the eight threads meeting the first cases each built it, about 0.3 CPU-s per
  worker in the first round). The bench's polling parses a manifest only when it changed
  (its process: 0.05-0.07 CPU-s a round before, 0.04-0.05 after). Fetch ratio on main
  before these: 0.41x, after: 0.58x and 0.59x.
- Measured and not merged: requests sent through http.client on connections kept per
  thread and origin instead of urllib3's pool manager cut user CPU per file from 977-1028
  to 773-841 µs with 8 threads in one process, but five alternated full runs each gave
  median 209 MiB/s (main) against 211 MiB/s (the change), within the noise; urllib3 stays.
  Concurrency 4 instead of 8 threads: no consistent difference. pycurl for the byte path:
  about 0.15 CPU-s less a round, a new dependency, and the address guard to redo. Keeping
  every round's files until the end of the benchmark instead of deleting them between
  rounds (ext4 without a journal skips recently freed inodes when it allocates one, which
  the profile showed varying from 0.07 to 0.28 CPU-s a round): ours 191 and 193 MiB/s
  against 237 and 230 with the deletions, so the bench deletes between rounds as before.
- Not reached: 0.7x. curl moved between 293 and 468 MiB/s from run to run; at its typical
  400 MiB/s, 0.7x needs 280 MiB/s, a quarter less wall time, about 0.5 CPU-s a round less,
  and what is left is spread thin over the request path, Celery's consume/ack (about
  0.15), ingest and settle (about 0.17), commit, logs and metrics per file.

### Fifth pass on the worker (2026-11-30, 02:50-03:30 UTC)

On a fresh machine, the code above gave 0.58x in a full `make bench` and 0.68x-0.80x in
`--only fetch` runs (curl 208-441 MiB/s). perf on the two workers (`perf record -g -p`),
psutil CPU of every process on the machine, and /proc/stat sampled every 20 ms:

- **The bench's own deletions made the next round quadratic.** `recently_deleted` and the
  buffer look-ups under it (`find_get_block_common`, `ext4_get_group_desc`,
  `find_inode_bit`) were 20-26 % of the workers' CPU, all under `open(O_CREAT)` and `mkdir`.
  ext4 without a journal (this disk) will not reuse an inode freed in the last 60 s (360 s
  while its inode table block is dirty) and looks each one up when it allocates: the bench
  deleted a round's 550-800 files just before the next round created as many in the same
  block group. The workers' system time grew round after round (0.5 to 1.5 CPU-s) and
  vanished after a 31 s pause between rounds (246-275 MiB/s against 150-210). A production
  archive does not delete at that rate. The bench now moves each run's files aside and
  deletes them when it ends.
- **Fresh page cache is expensive here.** Once nothing was deleted, `copy_folio_from_iter_
  atomic` (the write into the page cache) took 26 % of the workers' CPU: every file's pages
  were new memory to this virtual machine, faulted in by the host on first touch (DAMON
  reclaim keeps free memory cold). That is why the fourth pass found keeping files slower
  than deleting them. The workers now drop a downloaded file's pages once it is fsynced
  (`posix_fadvise(DONTNEED)`; they never read it again, and in a container that cache counts
  against the memory limit), so the next file reuses them: the same workers went from 140-176
  to 300-336 MiB/s, system time from 0.6-0.8 to about 0.2 CPU-s per worker and round. curl's
  pages are dropped after its timed run, so both sides start every run the same way.
- **Then the workers are CPU-bound on Python.** A round costs 1.65-1.7 CPU-s on two cores
  for 0.84 s: the workers 1.27 (Python 45 %, kernel 40 % of which context switches and
  wake-ups 16 %, sha256 11 %), the file server 0.17, Redis 0.06, the bench's process 0.06,
  kworkers 0.07, the receiver 0.02. More download threads (12 instead of 8 per worker)
  changed nothing. Under `--gil`, urllib3's request path was a quarter of the workers'
  Python time; one thread fetching 300 KiB files spent 1,030 µs of CPU a file through the
  Fetcher against 830 µs with http.client directly.
- **Merged: the worker's own connections** (`worker/connections.py`): one kept-alive
  http.client connection per thread and origin, the same address check at connect time,
  TLS with a context per connection, gzip and deflate inflated a bounded piece at a time,
  a kept connection the host closed replaced at once. Two complete pipelines (own Redis,
  receiver and two workers each, one file server) in eight alternated rounds: worker CPU
  1.12-1.52 against 1.02-1.43 CPU-s a round (median 1.26 against 1.14), throughput 297
  against 320 MiB/s (median), every one of the eight pairs in favour of the change
  (1.02x-1.17x).
- Measured and not kept: an aiohttp file server for the bench (same CPU as the threaded
  one); posting the 50 webhooks from 4 threads instead of 1 (within the noise); 1 MiB
  reads instead of 256 KiB (fewer calls, each releasing the GIL): eight paired rounds,
  0.97x the throughput, 5 % more worker CPU; the garbage collector's first threshold at
  50,000 instead of 700 with `gc.freeze()` after start-up: 0.80x, 24 % more worker CPU
  (the heap grows between collections, and new memory is what costs here).
- **Two more faults of the bench itself.** (1) wrk's last requests could still be inside
  the casefetch receiver when the receiver benchmark cleared the queues: the fetch
  benchmark's workers then met a leftover case whose 20 files live on files.example.com,
  and spent its first round retrying them (44.8 MiB/s that round). The receiver benchmark
  now stops its servers before clearing. (2) An earlier run's scratch directory, deleted
  just before, is what the next run's files skip: `make bench` now syncs first, and after
  deleting its scratch directory (a clean inode table block turns 360 s of skipping into
  60 s), but runs back to back still measured fetch at 0.59x, 0.60x, 0.63x and 0.66x
  (`recently_deleted` and its look-ups still 7 % of the machine's busy time, perf -a),
  against 0.71x after six quiet minutes and 0.68x-0.76x for `--only fetch` and
  `--only receiver,fetch`. Within one run, later rounds are slower for both sides (curl
  439 to 356 MiB/s, casefetch 292 to 248): every case frees one inode, its pending
  manifest, which the next files skip in turn; a production archive on this file system
  would pay the same (docs/scaling.md, "Archive disk").
- Where this leaves benchmark 2: 0.71x, 0.72x and 0.77x in three full `make bench` runs
  after a quiet machine (the first: ours 292, 285, 294, 248, 260 MiB/s; curl 439, 443, 403,
  381, 356), five rounds instead of three since the median of three moved by a tenth
  between runs. What is left is Python: a case
  costs the workers about 6.5 ms of interpreter time besides its files (Celery's consume
  and acknowledge about 2 ms, ingest 2.3 ms, commit and settle 2.2 ms, a dozen Redis round
  trips in all), its eleven files about 0.3 ms each; both cores are busy throughout.
"""


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cells(result: Result) -> tuple[str, ...]:
    unit = f" {result.unit}" if result.unit else ""
    ours = f"{result.ours:.0f}" if result.unit == "files" else fmt(result.ours)
    comparison = f"{fmt(result.comparison)}{unit}" if result.comparison is not None else "—"
    ratio = f"{result.ratio:.2f}x" if result.ratio is not None else "—"
    return (result.name, f"{ours}{unit}", comparison, ratio, result.target,
            "pass" if result.passed else "FAIL", result.notes)


def print_table(results: list[Result], console: Console | None = None) -> None:
    table = Table(title="casefetch benchmarks")
    for header in HEADERS:
        table.add_column(header, overflow="fold")
    for result in results:
        row = cells(result)
        style = None if result.passed else "red"
        table.add_row(*row, style=style)
    console = console or Console()
    # A pipe or CI log gets 80 columns by default: too narrow for this table.
    console.width = max(console.width, 150)
    console.print(table)


def markdown_table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for result in results:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(result)) + " |")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    info = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": _cpu_model(), "cores": str(os.cpu_count()),
            "load average at the end": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "python": platform.python_version(), "kernel": platform.release()}
    for package in ("aiohttp", "redis", "celery", "kombu", "urllib3", "orjson", "msgspec"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    for name, argv in (("redis-server", ["redis-server", "--version"]),
                       ("wrk", ["wrk", "--version"]), ("curl", ["curl", "--version"])):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
            info[name] = (done.stdout or done.stderr).splitlines()[0][:80]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            info[name] = "not found"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_markdown(path: Path, results: list[Result], seconds: float, command: str,
                   scratch: str) -> None:
    info = machine()
    details = {r.name: r.details for r in results if r.details}
    text = "\n".join([
        "# Benchmarks",
        "",
        f"The last full run of `{command}`: {seconds:.0f} s, {info['date']}. Ratios matter more",
        "than absolute numbers: the machine is shared and its load varies from run to run.",
        "",
        markdown_table(results),
        "",
        METHOD,
        FINDINGS,
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in info.items()],
        f"- scratch directory (archives, curl's files, Redis): {scratch}",
        "",
        "## Details of the run",
        "",
        "```json",
        json.dumps(details, indent=2, ensure_ascii=False),
        "```",
        "",
    ])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
