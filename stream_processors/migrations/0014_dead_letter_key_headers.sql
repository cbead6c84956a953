-- A dead letter keeps the whole Kafka message: its key (the run id the producer sent) and
-- its headers (name, value) in order, as well as the value (`raw`), so an operator can
-- resend it as it was or tell which run it came from when it does not decode.
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS key String DEFAULT '';
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS headers Array(Tuple(name String, value String)) DEFAULT [];
