-- Put an event made outside a script in the webhook outbox (a batch that failed as it was created).
-- KEYS: none   ARGV: event id, url, owner, subject, type, body
outbox_put(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], now())
return 1
