# The Python hello world: answers "Hello World" (or "Hello NAME" with ?name=NAME).


def handler(event, context):
    who = (event.get("queryStringParameters") or {}).get("name", "World")
    return {
        "statusCode": 200,
        "headers": {"content-type": "text/plain"},
        "body": f"Hello {who}\n",
    }
