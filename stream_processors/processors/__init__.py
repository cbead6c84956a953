"""The pure processors: records in, validated events and Arrow rows out. No I/O here:
the sink (stream_processors/sink.py) writes what they return."""
