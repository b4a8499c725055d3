"""The credentials the tests' receivers accept, one per scheme."""

TOKEN = "test-bearer-token"
HMAC_KEY, HMAC_SECRET = "test-api-key", "test-api-secret"
BASIC_USER, BASIC_PASSWORD = "platform", "p4ss:word"
