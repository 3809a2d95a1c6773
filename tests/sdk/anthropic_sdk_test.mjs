// Drives the official Anthropic Node SDK against ANTHROPIC_BASE_URL (tollgate, or the fake upstream
// directly) and checks what the SDK parses: text, usage with cache reads and 5-minute / 1-hour cache
// writes, streams, count_tokens, typed errors, and which credential reaches the upstream.
// ANTHROPIC_SDK picks the generation (package.json aliases): anthropic-sdk-0 (0.x: apiKey is sent as
// x-api-key) or anthropic-sdk-1 (1.x: apiKey and authToken both as Authorization: Bearer).
// With ANTHROPIC_LEDGER_EXPECT set, every metered call appends the usage the SDK saw to that file
// (JSON lines), so run_sdk_test.sh can compare tollgate's ledger with it after shutdown.
// Run: ANTHROPIC_SDK=anthropic-sdk-1 ANTHROPIC_BASE_URL=http://127.0.0.1:8080 node --test anthropic_sdk_test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';

const sdk = process.env.ANTHROPIC_SDK || 'anthropic-sdk-1';
const { default: Anthropic, toFile } = await import(sdk);
const sdkVersion = JSON.parse(readFileSync(new URL(`./node_modules/${sdk}/package.json`, import.meta.url))).version;
const generation = Number(sdkVersion.split('.')[0]);

const baseURL = process.env.ANTHROPIC_BASE_URL;
if (!baseURL) throw new Error('set ANTHROPIC_BASE_URL, e.g. http://127.0.0.1:8080 (no /v1: the SDK adds it)');
// The key tollgate holds for its upstream; unset when the SDK talks to the fake upstream directly.
const upstreamKey = process.env.ANTHROPIC_UPSTREAM_KEY || '';
const behindRelay = upstreamKey ? false : 'needs tollgate in front (ANTHROPIC_UPSTREAM_KEY)';
const expectFile = process.env.ANTHROPIC_LEDGER_EXPECT || '';

const secrets = { apiKey: 'sk-ant-api03-client-secret-key', authToken: 'sk-ant-oat01-client-secret-token' };
const sent = new Map();  // x-request-id -> headers the SDK put on the wire

// maxRetries 0: a retry inside the SDK would hide a failure the relay should not have. The fetch
// wrapper records what the SDK sends, so each test knows which credential header it exercised.
function makeClient(style) {
  return new Anthropic({
    baseURL,
    apiKey: style === 'apiKey' ? secrets.apiKey : null,
    authToken: style === 'authToken' ? secrets.authToken : null,
    maxRetries: 0,
    timeout: 20_000,
    fetch: (url, init) => {
      const headers = new Headers(init?.headers);
      sent.set(headers.get('x-request-id'), headers);
      return fetch(url, init);
    },
  });
}
const clients = { apiKey: makeClient('apiKey'), authToken: makeClient('authToken') };
const client = clients.apiKey;

const model = 'claude-sonnet-4-5-20250929';  // priced as claude-sonnet-4.5 through its alias
// 1.x warns on every call that this snapshot retires on 2026-11-30; the test's output is clearer
// without that line repeated 30 times.
const warn = console.warn;
console.warn = (...args) => {
  if (!String(args[0]).startsWith(`The model '${model}' is deprecated`)) warn(...args);
};
const params = { model, max_tokens: 256, messages: [{ role: 'user', content: 'Say hello to the SDK test.' }] };
const replyText = 'Hello! This is the tollgate fake upstream speaking.';

let callNumber = 0;
// Request options for one call: a request id the ledger row will carry, and x-fake-* knobs.
function call(label, headers = {}) {
  const id = `${sdk}-${++callNumber}-${label}`;
  return { id, options: { headers: { 'x-request-id': id, ...headers } } };
}

// Appends what the SDK saw for a metered call; the runner finds the ledger row by request id.
function expectLedgerRow(id, usage, stream) {
  if (!expectFile) return;
  const row = {
    request_id: id,
    stream: stream ? 1 : 0,
    input: usage.input_tokens,
    output: usage.output_tokens,
    cache_read: usage.cache_read_input_tokens ?? 0,
    cache_write: usage.cache_creation_input_tokens ?? 0,
    cache_write_1h: usage.cache_creation?.ephemeral_1h_input_tokens ?? 0,
  };
  appendFileSync(expectFile, `${JSON.stringify(row)}\n`);
}

const cacheKnobs = {
  'x-fake-cached-tokens': '1200',
  'x-fake-cache-creation-tokens': '300',
  'x-fake-cache-creation-1h-tokens': '200',
};

function assertCacheUsage(usage) {
  assert.ok(usage.input_tokens > 0);
  assert.equal(usage.cache_read_input_tokens, 1200);
  assert.equal(usage.cache_creation_input_tokens, 500);
  assert.equal(usage.output_tokens, 8);
}

test(`${sdk} ${sdkVersion}: messages.create, non-stream: text, stop_reason, usage, request-id`, async () => {
  const { id, options } = call('plain');
  const message = await client.messages.create(params, options);
  assert.equal(message.type, 'message');
  assert.equal(message.role, 'assistant');
  assert.equal(message.content[0].type, 'text');
  assert.equal(message.content[0].text, replyText);
  assert.equal(message.stop_reason, 'end_turn');
  assert.ok(message.usage.input_tokens > 0);
  assert.equal(message.usage.output_tokens, 8);
  assert.equal(message.usage.cache_read_input_tokens, 0);
  assert.equal(message.usage.cache_creation_input_tokens, 0);
  // The SDK reads Anthropic's request-id response header into _request_id.
  assert.match(message._request_id ?? '', /^req_/, 'request-id response header missing');
  expectLedgerRow(id, message.usage, false);
});

test(`${sdk}: messages.create, non-stream with cache reads and 5m/1h writes`, async () => {
  const { id, options } = call('cache', cacheKnobs);
  const message = await client.messages.create(params, options);
  assertCacheUsage(message.usage);
  assert.deepEqual(message.usage.cache_creation, { ephemeral_5m_input_tokens: 300, ephemeral_1h_input_tokens: 200 });
  expectLedgerRow(id, message.usage, false);
});

test(`${sdk}: an image and a PDF sent as base64 sources: relayed, metered from the upstream's usage`, async () => {
  // 1.5 MB of base64: tollgate's admission estimate counts them as an image and a PDF, not as
  // ~400,000 tokens of text; the ledger row is the upstream's usage, as for any call.
  const png = Buffer.alloc(600_000);
  png.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const pdf = Buffer.concat([Buffer.from('%PDF-1.7\n'), Buffer.alloc(500_000, 0x20)]);
  const { id, options } = call('media');
  const message = await client.messages.create({
    model,
    max_tokens: 256,
    messages: [{
      role: 'user',
      content: [
        { type: 'image', source: { type: 'base64', media_type: 'image/png', data: png.toString('base64') } },
        { type: 'document', source: { type: 'base64', media_type: 'application/pdf', data: pdf.toString('base64') } },
        { type: 'text', text: 'Compare the image with the document.' },
      ],
    }],
  }, options);
  assert.equal(message.content[0].text, replyText);
  assert.ok(message.usage.input_tokens > 0);
  expectLedgerRow(id, message.usage, false);
});

test(`${sdk}: messages.stream: text deltas, finalMessage() with cumulative usage and cache tokens`, async () => {
  const { id, options } = call('stream-helper', cacheKnobs);
  const stream = client.messages.stream(params, options);
  let text = '';
  const types = [];
  stream.on('text', (delta) => { text += delta; });
  stream.on('streamEvent', (event) => types.push(event.type));
  const message = await stream.finalMessage();
  assert.equal(text, replyText);
  assert.equal(message.content[0].text, replyText);
  assert.equal(message.stop_reason, 'end_turn');
  assert.equal(types[0], 'message_start');
  assert.equal(types.at(-1), 'message_stop');
  assertCacheUsage(message.usage);
  expectLedgerRow(id, message.usage, true);
});

test(`${sdk}: messages.create({stream: true}): message_start usage, cumulative message_delta usage`, async () => {
  const { id, options } = call('stream-create', cacheKnobs);
  const stream = await client.messages.create({ ...params, stream: true }, options);
  const types = [];
  let text = '';
  let start = null;
  let delta = null;
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === 'message_start') start = event.message.usage;
    if (event.type === 'content_block_delta') text += event.delta.text;
    if (event.type === 'message_delta') delta = event.usage;
  }
  assert.deepEqual([types[0], types[1], types.at(-2), types.at(-1)],
    ['message_start', 'content_block_start', 'message_delta', 'message_stop']);
  assert.equal(text, replyText);
  assert.equal(start.cache_read_input_tokens, 1200);
  assert.equal(start.cache_creation_input_tokens, 500);
  assert.deepEqual(start.cache_creation, { ephemeral_5m_input_tokens: 300, ephemeral_1h_input_tokens: 200 });
  assertCacheUsage(delta);
  expectLedgerRow(id, { ...delta, cache_creation: start.cache_creation }, true);
});

// The beta namespace (client.beta.messages: betas such as the 1M context window, context
// management, the tool runner's calls) posts to /v1/messages?beta=true (0.x; 1.x: no query) with the
// betas in an anthropic-beta header: the same metered route, priced as any message.
test(`${sdk}: beta.messages.create and beta.messages.stream (POST /v1/messages?beta=true) are metered as messages`, async () => {
  const urls = [];
  const betaClient = new Anthropic({
    baseURL, apiKey: secrets.apiKey, maxRetries: 0, timeout: 20_000,
    fetch: (url, init) => { urls.push(String(url)); return fetch(url, init); },
  });
  const betas = ['context-1m-2025-08-07'];
  const a = call('beta-create', cacheKnobs);
  const message = await betaClient.beta.messages.create({ ...params, betas }, a.options);
  assert.equal(message.content[0].text, replyText);
  assertCacheUsage(message.usage);
  expectLedgerRow(a.id, message.usage, false);
  const b = call('beta-stream', cacheKnobs);
  const stream = betaClient.beta.messages.stream({ ...params, betas }, b.options);
  let text = '';
  stream.on('text', (delta) => { text += delta; });
  const final = await stream.finalMessage();
  assert.equal(text, replyText);
  assertCacheUsage(final.usage);
  expectLedgerRow(b.id, final.usage, true);
  // 0.x marks the beta namespace with ?beta=true, 1.x with the header alone.
  assert.equal(urls.length, 2);
  for (const url of urls) assert.match(url, generation === 0 ? /\/v1\/messages\?beta=true$/ : /\/v1\/messages$/);
});

test(`${sdk}: a raw stream keeps Anthropic's event sequence, ping included`, async () => {
  const { id, options } = call('stream-raw');
  const response = await client.messages.create({ ...params, stream: true }, options).asResponse();
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type'), /^text\/event-stream/);
  const body = await response.text();
  const events = [...body.matchAll(/^event: ?(\S+)$/gm)].map((m) => m[1]);
  const distinct = events.filter((e, i) => e !== events[i - 1]);
  assert.deepEqual(distinct, ['message_start', 'content_block_start', 'ping', 'content_block_delta',
    'content_block_stop', 'message_delta', 'message_stop']);
  const deltaEvent = body.split(/\r?\n\r?\n/).find((e) => /^event: ?message_delta$/m.test(e));
  const usage = JSON.parse(deltaEvent.match(/^data: ?(.*)$/m)[1]).usage;
  expectLedgerRow(id, usage, true);
});

test(`${sdk}: long-context prompt (over 200k tokens with cache reads) is metered in full`, async () => {
  const { id, options } = call('long-context', {
    'x-fake-cached-tokens': '250000',
    'x-fake-cache-creation-tokens': '1000',
    'x-fake-cache-creation-1h-tokens': '500',
  });
  const message = await client.messages.create(params, options);
  assert.equal(message.usage.cache_read_input_tokens, 250000);
  assert.equal(message.usage.cache_creation_input_tokens, 1500);
  expectLedgerRow(id, message.usage, false);
});

test(`${sdk}: messages.countTokens passes through and matches the message's input_tokens`, async () => {
  const { options } = call('count');
  const count = await client.messages.countTokens({ model, messages: params.messages }, options);
  const { options: createOptions } = call('count-compare');
  const message = await client.messages.create(params, createOptions);
  assert.ok(count.input_tokens > 0);
  assert.equal(count.input_tokens, message.usage.input_tokens);
});

// What the SDK of this generation puts on the wire for each credential style.
const wireHeader = {
  apiKey: generation === 0 ? 'x-api-key' : 'authorization',
  authToken: 'authorization',
};
const anthropicVersion = generation === 0 ? '2023-06-01' : undefined;  // 1.x pins a newer one

// The upstream must see tollgate's key in exactly one credential header and the client's secret
// nowhere; the SDK's version and beta headers pass through unchanged.
function assertUpstreamSaw(received, style, id) {
  const wire = sent.get(id);
  assert.ok(wire, `no request recorded for ${id}`);
  const secret = secrets[style];
  const wireValue = wire.get(wireHeader[style]) ?? '';
  assert.ok(wireValue.includes(secret), `the SDK did not send ${style} in ${wireHeader[style]}`);
  for (const [name, value] of Object.entries(received))
    assert.ok(!value.includes(secret), `the client's ${style} reached the upstream in ${name}`);
  const viaKey = received['x-api-key'] === upstreamKey;
  const viaBearer = received.authorization === `Bearer ${upstreamKey}`;
  assert.ok(viaKey !== viaBearer,
    `upstream key expected in exactly one of x-api-key / authorization, got x-api-key=${received['x-api-key']} ` +
    `authorization=${received.authorization}`);
  assert.equal(received['anthropic-version'], wire.get('anthropic-version'));
  if (anthropicVersion) assert.equal(received['anthropic-version'], anthropicVersion);
  assert.equal(received['anthropic-beta'], 'token-counting-2024-11-01');
  return viaKey ? 'x-api-key' : 'authorization';
}

const echo = { 'x-fake-echo-headers': '1', 'anthropic-beta': 'token-counting-2024-11-01' };

for (const style of ['apiKey', 'authToken']) {
  const c = clients[style];
  const label = `${style} (sent as ${wireHeader[style]})`;

  test(`${sdk}: credentials ${label}: upstream sees the upstream key, never the client's, on messages.create`,
    { skip: behindRelay }, async () => {
      const { id, options } = call(`cred-${style}`, echo);
      const message = await c.messages.create(params, options);
      assertUpstreamSaw(message.received_headers, style, id);
      expectLedgerRow(id, message.usage, false);
    });

  test(`${sdk}: credentials ${label}: the same on a stream (headers as the upstream saw them, in message_start)`,
    { skip: behindRelay }, async () => {
      const { id, options } = call(`cred-stream-${style}`, echo);
      const message = await c.messages.stream(params, options).finalMessage();
      assertUpstreamSaw(message.received_headers, style, id);
      expectLedgerRow(id, message.usage, true);
    });

  test(`${sdk}: credentials ${label}: the same on count_tokens`, { skip: behindRelay }, async () => {
    const { id, options } = call(`cred-count-${style}`, echo);
    const count = await c.messages.countTokens({ model, messages: params.messages }, options);
    assertUpstreamSaw(count.received_headers, style, id);
  });

  test(`${sdk}: credentials ${label}: count_tokens carries the upstream key in the same header as messages`,
    { skip: behindRelay }, async () => {
      const first = call(`cred-form-messages-${style}`, echo);
      const message = await c.messages.create(params, first.options);
      const messagesHeader = assertUpstreamSaw(message.received_headers, style, first.id);
      expectLedgerRow(first.id, message.usage, false);
      const second = call(`cred-form-count-${style}`, echo);
      const count = await c.messages.countTokens({ model, messages: params.messages }, second.options);
      const countHeader = assertUpstreamSaw(count.received_headers, style, second.id);
      assert.equal(countHeader, messagesHeader,
        `upstream got the key in ${messagesHeader} on /v1/messages but in ${countHeader} on /v1/messages/count_tokens`);
    });
}

// An upstream error must reach the SDK with its status, headers and Anthropic error body intact.
// A connection error here means the SDK's fetch could not parse the relay's answer.
async function assertRejects(promise, status, type, errorClass) {
  await assert.rejects(promise, (err) => {
    const cause = err instanceof Anthropic.APIConnectionError ? ` (cause: ${err.cause?.message})` : '';
    assert.ok(err instanceof errorClass,
      `expected ${errorClass.name}, got ${err?.constructor?.name}: ${err?.message}${cause}`);
    assert.equal(err.status, status);
    assert.equal(err.error?.type, 'error');
    assert.equal(err.error?.error?.type, type);
    if (status === 429) assert.equal(err.headers.get('retry-after'), '1');
    return true;
  });
}

// 0.x has no class of its own for 529; 1.x adds OverloadedError (a subclass of InternalServerError).
const overloaded = Anthropic.OverloadedError ?? Anthropic.InternalServerError;

// The Files API (beta): a multipart upload of arbitrary bytes, relayed unmetered. The fake
// upstream answers with the size and SHA-256 of the `file` part it received.
test(`${sdk}: beta.files.upload passes a binary multipart body byte for byte`, async () => {
  const bytes = Buffer.alloc(1024 * 1024 + 3);
  for (let i = 0; i < bytes.length; ++i) bytes[i] = (i * 7919 + (i >> 11)) & 0xff;
  const meta = await client.beta.files.upload({ file: await toFile(bytes, 'report.pdf', { type: 'application/pdf' }) });
  assert.equal(meta.type, 'file');
  assert.equal(meta.filename, 'report.pdf');
  assert.equal(meta.size_bytes, bytes.length);
  assert.equal(meta.fake_sha256, createHash('sha256').update(bytes).digest('hex'));
});

// Message Batches: the batch object names its results as an absolute URL on the upstream's host,
// and batches.results() fetches that URL as is. Through tollgate it must lead back to tollgate
// (the upstream would refuse the client's tollgate key), so the relay makes it a path the SDK
// resolves against its base URL.
test(`${sdk}: messages.batches create, retrieve, list and results`, async () => {
  const created = await client.messages.batches.create({
    requests: [{ custom_id: 'first', params }, { custom_id: 'second', params }],
  });
  assert.equal(created.type, 'message_batch');
  assert.equal(created.processing_status, 'in_progress');
  const batch = await client.messages.batches.retrieve(created.id);
  assert.equal(batch.processing_status, 'ended');
  if (upstreamKey) assert.equal(batch.results_url, `/v1/messages/batches/${created.id}/results`);
  else assert.ok(batch.results_url.startsWith('http'));
  const page = await client.messages.batches.list();
  if (upstreamKey) assert.equal(page.data[0].results_url, '/v1/messages/batches/msgbatch_listed/results');
  const results = [];
  for await (const entry of await client.messages.batches.results(created.id)) results.push(entry);
  assert.deepEqual(results.map((r) => r.custom_id), ['first', 'second']);
  assert.equal(results[0].result.type, 'succeeded');
  assert.equal(results[0].result.message.usage.input_tokens, 20);
});

test(`${sdk}: a 429 surfaces as RateLimitError with Retry-After`, async () => {
  const { options } = call('error-429', { 'x-fake-status': '429' });
  await assertRejects(client.messages.create(params, options), 429, 'rate_limit_error', Anthropic.RateLimitError);
});

// An error tollgate makes itself (here a `stream` that is not a boolean) is in Anthropic's shape and
// names the call's id where the SDK reads it: APIError.requestID, from the request-id header.
test(`${sdk}: tollgate's own error is a BadRequestError whose requestID is the call's id`, { skip: behindRelay }, async () => {
  const { id, options } = call('own-error');
  await assert.rejects(client.messages.create({ ...params, stream: 'yes' }, options), (err) => {
    assert.ok(err instanceof Anthropic.BadRequestError, `got ${err?.constructor?.name}: ${err?.message}`);
    assert.equal(err.error?.error?.type, 'invalid_request_error');
    assert.equal(err.requestID, id);
    assert.equal(err.error?.request_id, id);
    return true;
  });
});

test(`${sdk}: a 529 from the upstream is relayed as status 529 and surfaces as ${overloaded.name}, non-stream and stream`, async () => {
  if (generation >= 1) assert.ok(Anthropic.OverloadedError, '1.x should export OverloadedError');
  const plain = call('error-529', { 'x-fake-status': '529' });
  await assertRejects(client.messages.create(params, plain.options), 529, 'overloaded_error', overloaded);
  const streamed = call('error-529-stream', { 'x-fake-status': '529' });
  await assertRejects(client.messages.create({ ...params, stream: true }, streamed.options),
    529, 'overloaded_error', overloaded);
  const helper = call('error-529-helper', { 'x-fake-status': '529' });
  await assertRejects(client.messages.stream(params, helper.options).finalMessage(), 529, 'overloaded_error', overloaded);
});

test(`${sdk}: an error event mid-stream surfaces as APIError with the upstream's error type`, async () => {
  const { options } = call('error-mid-stream', { 'x-fake-fault': 'error-mid-stream' });
  const stream = await client.messages.create({ ...params, stream: true }, options);
  await assert.rejects(async () => { for await (const _ of stream); }, (err) => {
    assert.ok(err instanceof Anthropic.APIError, `got ${err?.constructor?.name}: ${err?.message}`);
    assert.equal(err.error?.error?.type, 'overloaded_error');
    return true;
  });
});

test(`${sdk}: a 429 on count_tokens surfaces as RateLimitError`, async () => {
  const { options } = call('error-count-429', { 'x-fake-status': '429' });
  await assertRejects(client.messages.countTokens({ model, messages: params.messages }, options),
    429, 'rate_limit_error', Anthropic.RateLimitError);
});
