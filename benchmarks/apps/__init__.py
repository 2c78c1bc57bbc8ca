"""The servers under test, one small app each, all with the same two routes:
a stream of one topic, and ``POST /publish?topic=T`` whose body is the event's
data."""
