#!/usr/bin/env python3
"""Send a fixed set of events to Keel through a real Python analytics SDK.

Run with the venv made by tests/sdk/setup.sh:

    .cache/sdk/venv/bin/python tests/sdk/send_python.py --sdk rudder \
        --host http://127.0.0.1:8080 --write-key KEY --run-id r1 --burst 1000

Sends identify, track, page, screen, group, alias and then --burst tracks, each with
an explicit messageId "<run-id>-<sdk>-<kind>-<i>", flushes and shuts the
client down, then prints one JSON line on stdout listing every message sent.
Exits 1 if the SDK reported any delivery error (its on_error hook fired, a
message could not be queued, or messages were left unsent), 2 on timeout.
Diagnostics go to stderr.
"""

import argparse
import json
import logging
import os
import sys
import threading


def log(msg):
    print(f"[send_python] {msg}", file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sdk", required=True, choices=["rudder", "segment"])
    p.add_argument("--host", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--write-key", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--burst", type=int, default=1000, help="number of extra 'Burst' tracks")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="give up (exit 2) if sending has not finished after this many seconds")
    return p.parse_args()


def make_client(sdk, host, write_key, on_error):
    # Short upload interval so the tail of the queue goes out quickly; default
    # batch size (upload_size=100); a few retries with backoff are kept.
    common = dict(
        host=host,
        on_error=on_error,
        upload_interval=0.1,
        max_retries=3,
        timeout=15,
    )
    if sdk == "rudder":
        from rudderstack.analytics import Client
        from rudderstack.analytics.version import VERSION
        # gzip defaults to True for this SDK; left on.
        return Client(write_key, **common), VERSION
    from segment.analytics import Client
    from segment.analytics.version import VERSION
    # gzip defaults to False for this SDK; left off.
    return Client(write_key, **common), VERSION


def main():
    args = parse_args()
    if args.burst < 0:
        log("--burst must be >= 0")
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    lock = threading.Lock()
    failed_ids = set()
    error_count = [0]

    def on_error(err, batch):
        with lock:
            error_count[0] += 1
            for msg in batch:
                failed_ids.add(msg.get("messageId"))
        log(f"SDK delivery error for {len(batch)} message(s): {err!r}")

    client, version = make_client(args.sdk, args.host.rstrip("/"), args.write_key, on_error)
    log(f"{args.sdk} python SDK {version} -> {args.host} (run {args.run_id}, burst {args.burst})")

    # Watchdog: flush() blocks until the queue is drained, which with retries
    # against a dead server could take very long.
    def on_timeout():
        log(f"timed out after {args.timeout}s; exiting 2")
        sys.stderr.flush()
        os._exit(2)

    watchdog = threading.Timer(args.timeout, on_timeout)
    watchdog.daemon = True
    watchdog.start()

    rid, sdk = args.run_id, args.sdk
    sent = []

    def mid(kind, i=0):
        return f"{rid}-{sdk}-{kind}-{i}"

    def record(ok_msg, kind, user_id, event=None):
        ok, msg = ok_msg
        sent.append({"messageId": msg["messageId"], "type": kind,
                     "userId": user_id, "event": event})
        if not ok:
            with lock:
                failed_ids.add(msg["messageId"])
            log(f"could not queue {msg['messageId']}")

    user = f"{rid}-u1"
    record(client.identify(user_id=user,
                           traits={"name": "Ada Lovelace", "email": f"{rid}@example.com",
                                   "plan": "pro"},
                           message_id=mid("identify")),
           "identify", user)
    record(client.track(user_id=user, event="Order Completed",
                        properties={"revenue": 42.5, "currency": "EUR"},
                        message_id=mid("track")),
           "track", user, "Order Completed")
    record(client.page(user_id=user, name="Home",
                       properties={"url": f"https://keel.test/{rid}/home"},
                       message_id=mid("page")),
           "page", user)
    record(client.screen(user_id=user, name="Dashboard",
                         properties={"tab": "overview", "visits": 3},
                         message_id=mid("screen")),
           "screen", user)
    record(client.group(user_id=user, group_id=f"{rid}-g1",
                        traits={"name": "Acme Inc"},
                        message_id=mid("group")),
           "group", user)
    record(client.alias(previous_id=f"{rid}-anon", user_id=user,
                        message_id=mid("alias")),
           "alias", user)
    for i in range(args.burst):
        uid = f"{rid}-u{i % 10}"
        record(client.track(user_id=uid, event="Burst", properties={"i": i},
                            message_id=mid("burst", i)),
               "track", uid, "Burst")

    # flush() waits until every queued message has been handed to the server
    # (or given up on, which calls on_error); join() then stops the consumer.
    client.flush()
    client.join()
    watchdog.cancel()

    leftover = client.queue.qsize()
    if leftover:
        log(f"{leftover} message(s) still queued after shutdown")

    failed = len(failed_ids) + leftover
    print(json.dumps({
        "sdk": sdk,
        "language": "python",
        "sdkVersion": version,
        "failed": failed,
        "sent": sent,
    }), flush=True)
    if failed or error_count[0]:
        log(f"FAILED: {failed} message(s) not delivered, {error_count[0]} error callback(s)")
        return 1
    log(f"ok: {len(sent)} message(s) delivered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
