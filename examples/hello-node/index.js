// The Node.js hello world: answers "Hello World" (or "Hello NAME" with ?name=NAME).
exports.handler = async (event) => {
  const who = (event.queryStringParameters && event.queryStringParameters.name) || "World";
  return {
    statusCode: 200,
    headers: { "content-type": "text/plain" },
    body: `Hello ${who}\n`,
  };
};
