// The baseline for bench/warm: a bare Node.js http server that calls the same
// handler module lampyr runs, in-process, with no platform in between.
//
//   node bench/warm/bare-node.js PORT HANDLER_FILE [EXPORT]
//
// PORT may be 0 (the OS picks a free port). Once listening it prints
// `bare-node listening on http://127.0.0.1:PORT` on stdout.
"use strict";
const http = require("http");
const path = require("path");

const [portArg, handlerFile, exportName = "handler"] = process.argv.slice(2);
if (portArg === undefined || handlerFile === undefined) {
  console.error("usage: node bare-node.js PORT HANDLER_FILE [EXPORT]");
  process.exit(2);
}
const handler = require(path.resolve(handlerFile))[exportName];
if (typeof handler !== "function") {
  console.error(`bare-node: ${handlerFile} does not export a function '${exportName}'`);
  process.exit(2);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", async () => {
    const q = req.url.indexOf("?");
    const rawPath = q < 0 ? req.url : req.url.slice(0, q);
    const rawQueryString = q < 0 ? "" : req.url.slice(q + 1);
    const body = Buffer.concat(chunks);
    // A minimal payload-format-2.0 event: enough for handlers that look at
    // the path, query, method and headers.
    const event = {
      version: "2.0",
      rawPath,
      rawQueryString,
      headers: req.headers,
      queryStringParameters: rawQueryString
        ? Object.fromEntries(new URLSearchParams(rawQueryString))
        : undefined,
      requestContext: { http: { method: req.method, path: rawPath } },
      body: body.length ? body.toString("utf8") : undefined,
      isBase64Encoded: false,
    };
    try {
      const r = await handler(event, {});
      res.writeHead(r.statusCode || 200, r.headers || {});
      res.end(r.body === undefined ? "" : r.body);
    } catch (err) {
      res.writeHead(500, { "content-type": "text/plain" });
      res.end(String((err && err.stack) || err) + "\n");
    }
  });
});

server.listen(Number(portArg), "127.0.0.1", () => {
  console.log(`bare-node listening on http://127.0.0.1:${server.address().port}`);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => process.exit(0));
}
