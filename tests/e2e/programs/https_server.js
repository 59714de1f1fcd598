// A Node.js HTTPS server for the e2e tests: answers every request with the
// body given on the command line. Node's OpenSSL may be built into the node
// binary itself (then ecapture must find the binary through /proc/PID/maps).
// Usage: node https_server.js PORT CERT KEY BODY
"use strict";
const fs = require("fs");
const https = require("https");
const [port, cert, key, body] = process.argv.slice(2);
https
  .createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (request, response) => {
    request.resume();
    request.on("end", () => {
      response.writeHead(200, { "content-type": "text/plain" });
      response.end(body);
    });
  })
  .listen(Number(port), "127.0.0.1");
