"""Benchmarks of casefetch against the limits of its own stack (issue 6).

``python -m bench`` (or ``make bench``) runs every benchmark side by side with its comparison,
prints one table and writes it to ``docs/benchmarks.md``. Modules, one per benchmark::

    harness     processes, scratch directories, RSS sampling, waiting
    payloads    realistic cases and their signatures
    fileserver  a fast file host serving generated PDFs and images from memory
    servers     the comparison receivers: bare aiohttp + RPUSH, aiohttp + Celery send_task
    receiver    1. receiver throughput (wrk)
    fetch       2. fetch throughput against curl
    memory      3. worker RSS on a 1 GiB PDF
    growth      4. time per item for 1 to 1,000 items
    payload     5. a 5 MiB payload, and receiver RSS over many requests
    report      the table and the markdown page
"""
