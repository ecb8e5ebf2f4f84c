// nodemailer's smtp-server as a benchmark peer: receives on 127.0.0.1 and discards.
// Usage: node smtp_server.js PORT [CERT KEY]; smtp-server is found through NODE_PATH.
'use strict';

const fs = require('fs');
const { SMTPServer } = require('smtp-server');

const [port, certFile, keyFile] = process.argv.slice(2);

const options = {
    logger: false,
    // Mail without AUTH, as the other servers take it.
    authOptional: true,
    disabledCommands: ['AUTH'],
    disableReverseLookup: true,
    maxClients: 100000,
    name: 'bench.example.test',
    onData(stream, session, callback) {
        stream.on('data', () => {});
        stream.on('end', () => callback(null));
    },
};
if (certFile) {
    options.cert = fs.readFileSync(certFile);
    options.key = fs.readFileSync(keyFile);
}

const server = new SMTPServer(options);
let listening = false;
server.on('error', (err) => {
    console.error('smtp-server error:', err.message);
    if (!listening) {
        process.exit(1); // could not listen (the port was taken): the suite retries
    }
});
// BENCH_BACKLOG sets the listen backlog; node's default is 511.
const backlog = Number(process.env.BENCH_BACKLOG || 511);
server.listen(Number(port), '127.0.0.1', backlog, () => {
    listening = true;
    console.log(`smtp-server listening on 127.0.0.1:${port}`);
});
process.on('SIGTERM', () => process.exit(0));
