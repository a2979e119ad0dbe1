# A lampyr function. `event` is the HTTP request (payload format 2.0) when
# called through its URL, or the JSON you pass to `lampyr invoke`.


def handler(event, context):
    who = (event.get("queryStringParameters") or {}).get("name", "World")
    print(f"greeting {who}")
    return {
        "statusCode": 200,
        "headers": {"content-type": "text/plain"},
        "body": f"Hello {who}\n",
    }
