// A lampyr function. `event` is the HTTP request (payload format 2.0) when
// called through its URL, or the JSON you pass to `lampyr invoke`.
exports.handler = async (event, context) => {
  const who = event.queryStringParameters?.name ?? "World";
  console.log(`greeting ${who}`);
  return {
    statusCode: 200,
    headers: { "content-type": "text/plain" },
    body: `Hello ${who}\n`,
  };
};
