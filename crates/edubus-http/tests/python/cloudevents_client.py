"""A client nobody here wrote: the CloudEvents Python SDK publishes to the gateway in structured
and binary mode with `requests`, then reads the events back and parses them with the SDK.

Usage: python3 cloudevents_client.py http://127.0.0.1:PORT
"""

import sys
import uuid

try:
    import requests

    try:
        from cloudevents.http import CloudEvent, from_dict, from_http, to_binary, to_structured
    except ImportError:  # cloudevents 2.x keeps the 1.x API under cloudevents.v1
        from cloudevents.v1.http import CloudEvent, from_dict, from_http, to_binary, to_structured
except ImportError as missing:
    sys.exit(f"missing Python package ({missing}): run `pip install cloudevents requests`")

BASE = sys.argv[1]
STUDENT = "6f1c2a4e-7b1d-4c55-9a0e-1c2d3e4f5a6b"
SESSION = "0b8e2a54-5f2e-4c1a-8a43-2f6a1b9c7d10"
CORRELATION = str(uuid.uuid4())


def attendance_marked(status):
    attributes = {
        "type": "attendance.marked",
        "source": "python-sdk",
        "id": str(uuid.uuid4()),
        "datacontenttype": "application/json",
        "correlationid": CORRELATION,
    }
    data = {
        "class_session_id": SESSION,
        "student_id": STUDENT,
        "status": status,
        "marked_by": SESSION,
        "marked_at": "2025-09-01T08:00:00Z",
    }
    return CloudEvent(attributes, data)


def publish(event, convert):
    headers, body = convert(event)
    response = requests.post(f"{BASE}/v1/events", headers=headers, data=body, timeout=30)
    assert response.status_code == 202, f"{convert.__name__}: {response.status_code} {response.text}"
    (published,) = response.json()["events"]
    assert published["id"] == event["id"], published
    return published["position"]


def main():
    sent = [attendance_marked("absent"), attendance_marked("late")]
    positions = [publish(sent[0], to_structured), publish(sent[1], to_binary)]
    assert positions[0] < positions[1], positions

    for event in sent:
        response = requests.get(f"{BASE}/v1/events/{event['id']}", timeout=30)
        assert response.status_code == 200, response.text
        got = from_http(dict(response.headers), response.content)
        assert got["id"] == event["id"], got
        assert got["type"] == "attendance.marked", got
        assert got["source"] == "python-sdk", got
        assert got["correlationid"] == CORRELATION, got
        assert got.data == event.data, got.data

    page = requests.get(f"{BASE}/v1/events", params={"correlation_id": CORRELATION}, timeout=30)
    assert page.status_code == 200, page.text
    listed = [from_dict(e["event"]) for e in page.json()["events"]]
    assert [e["id"] for e in listed] == [e["id"] for e in sent], listed
    assert [e.data["status"] for e in listed] == ["absent", "late"]
    print(f"python cloudevents client: published {len(sent)} events, read them back")


if __name__ == "__main__":
    main()
