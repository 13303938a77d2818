#!/usr/bin/env python3
"""Produce NDJSON events to the pipeline's Kafka topics with a third-party
client (confluent-kafka), the way any producer outside the pipeline would.

    python3 infra/kafka-produce.py --bootstrap kafka:9092 < events.ndjson

Each line goes to the topic of its event_type (funnel-events or iot-events),
keyed by user_id / device_id as DESIGN.md section 3 says, with Java's murmur2
partitioner so keys land where the pipeline's own producer puts them. A line
that is not a JSON object with a known event_type goes to --topic (default
funnel-events) as it is, and so does every line with --raw: the speed
layer dead-letters what is not a valid event for its topic, with the reason.
Prints one JSON summary line: {"produced": n, "by_topic": {...}}.
"""

import argparse
import json
import sys

from confluent_kafka import Producer

IOT_TYPES = {"sensor_reading", "device_status", "alarm"}


def route(line, topic, raw):
    """(topic, key) for one line: by event_type unless raw; key from user_id / device_id."""
    try:
        event = json.loads(line)
    except ValueError:
        return topic, None
    if not isinstance(event, dict):
        return topic, None
    key = event.get("device_id") if event.get("event_type") in IOT_TYPES else event.get("user_id")
    if not raw and event.get("event_type") in IOT_TYPES:
        topic = "iot-events"
    return topic, None if key is None else str(key).encode()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="bootstrap servers, e.g. 127.0.0.1:9092")
    parser.add_argument("--topic", default="funnel-events", help="topic for funnel events and unparseable lines")
    parser.add_argument("--raw", action="store_true", help="send every line to --topic, whatever its event_type")
    args = parser.parse_args()
    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
    })
    errors = []
    by_topic = {}

    def delivered(err, _msg):
        if err is not None:
            errors.append(str(err))

    for raw in sys.stdin:
        line = raw.rstrip("\n")
        if not line:
            continue
        topic, key = route(line, args.topic, args.raw)
        producer.produce(topic, value=line.encode(), key=key, on_delivery=delivered)
        by_topic[topic] = by_topic.get(topic, 0) + 1
        producer.poll(0)
    remaining = producer.flush(30)
    if remaining or errors:
        print(json.dumps({"error": errors or [f"{remaining} messages not delivered"]}))
        sys.exit(1)
    print(json.dumps({"produced": sum(by_topic.values()), "by_topic": by_topic}))


if __name__ == "__main__":
    main()
