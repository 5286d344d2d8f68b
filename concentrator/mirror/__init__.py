"""Telemetry mirror: every ASDU the relay forwards from a site, decoded and published to
an MQTT broker, one message per information object (docs/mqtt.md).

The relay only appends to a bounded queue (`MirrorQueue.push`, O(1), no decoding); a
feeder task writes batches to a child process (process.py, at a lower CPU priority),
which decodes and publishes (publisher.py). Nothing read from MQTT ever
reaches the relay: the publisher subscribes to nothing.
"""
