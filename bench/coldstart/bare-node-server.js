// The Node.js baseline for bench/coldstart: a minimal `http` server that
// requires the same handler file lampyr runs and answers every request with
// it, in-process, with no platform in between.
//
//   node bench/coldstart/bare-node-server.js PORT HANDLER_FILE [EXPORT]
//
// run.py measures the time from spawning this process to its first
// successful HTTP response.
"use strict";
const http = require("http");
const path = require("path");

const [portArg, handlerFile, exportName = "handler"] = process.argv.slice(2);
if (portArg === undefined || handlerFile === undefined) {
  console.error("usage: node bare-node-server.js PORT HANDLER_FILE [EXPORT]");
  process.exit(2);
}
const handler = require(path.resolve(handlerFile))[exportName];
if (typeof handler !== "function") {
  console.error(`bare-node-server: ${handlerFile} does not export a function '${exportName}'`);
  process.exit(2);
}

http
  .createServer(async (req, res) => {
    try {
      const r = await handler({ rawPath: req.url, headers: req.headers }, {});
      res.writeHead(r.statusCode || 200, r.headers || {});
      res.end(r.body === undefined ? "" : r.body);
    } catch (err) {
      res.writeHead(500, { "content-type": "text/plain" });
      res.end(String((err && err.stack) || err) + "\n");
    }
  })
  .listen(Number(portArg), "127.0.0.1");
