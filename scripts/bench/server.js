// Minimal node http server for scripts/bench.sh: answers every request with
// a small static body, keep-alive. Listens on 127.0.0.1:<port> (argv[2], 0 =
// any) and prints "port N" once listening.
const http = require('http');
const body = Buffer.from('hello from the benchmark\n');
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': body.length });
  res.end(body);
});
server.keepAliveTimeout = 60000;
server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  console.log(`port ${server.address().port}`);
});
