// Drives the official OpenAI Node SDK against OPENAI_BASE_URL (tollgate, or the fake upstream
// directly) and checks that what the SDK parses is intact: content, usage, streams, tool calls,
// embeddings, models, errors and response headers. Run: node --test openai_sdk_test.mjs
// OPENAI_SDK names the package to drive (package.json installs two generations under aliases:
// `openai`, 5.x, and `openai-7`, the current 7.x); the default is `openai`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';

const sdk = process.env.OPENAI_SDK || 'openai';
const { default: OpenAI, toFile } = await import(sdk);
const { OpenAIRealtimeWS } = await import(`${sdk}/realtime/ws`);
// The Responses API's WebSocket mode (GET /v1/responses): 7.x only.
const ResponsesWS = await import(`${sdk}/resources/responses/ws`).then((m) => m.ResponsesWS, () => null);
const LiveWS = await import(`${sdk}/resources/live/ws`).then((m) => m.LiveWS, () => null);

const baseURL = process.env.OPENAI_BASE_URL;
if (!baseURL) throw new Error('set OPENAI_BASE_URL, e.g. http://127.0.0.1:8080/v1');

// maxRetries 0: a retry inside the SDK would hide a failure the relay should not have.
const client = new OpenAI({ baseURL, apiKey: process.env.OPENAI_API_KEY || 'sk-sdk-test', maxRetries: 0, timeout: 20_000 });

const model = 'gpt-4.1';
const messages = [{ role: 'user', content: 'Say hello to the SDK test.' }];
const tools = [{
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather for a city',
    parameters: { type: 'object', properties: { location: { type: 'string' } }, required: ['location'] },
  },
}];

test('chat completion: content and usage', async () => {
  const completion = await client.chat.completions.create({ model, messages });
  assert.equal(completion.object, 'chat.completion');
  assert.ok(completion.choices[0].message.content.length > 0);
  assert.equal(completion.choices[0].finish_reason, 'stop');
  assert.ok(completion.usage.prompt_tokens > 0);
  assert.equal(completion.usage.total_tokens, completion.usage.prompt_tokens + completion.usage.completion_tokens);
});

test('chat stream without include_usage: text assembles, no usage-only chunk', async () => {
  const stream = await client.chat.completions.create({ model, messages, stream: true });
  let text = '';
  let finish = null;
  for await (const chunk of stream) {
    assert.ok(chunk.choices.length > 0, 'a chunk with empty choices arrived without include_usage');
    assert.ok(chunk.usage == null, 'usage arrived without include_usage');
    text += chunk.choices[0].delta.content ?? '';
    finish = chunk.choices[0].finish_reason ?? finish;
  }
  assert.ok(text.length > 0);
  assert.equal(finish, 'stop');
});

test('chat stream with include_usage: a final usage chunk', async () => {
  const stream = await client.chat.completions.create({
    model, messages, stream: true, stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.ok(last.usage.prompt_tokens > 0);
  assert.ok(last.usage.completion_tokens > 0);
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  assert.ok(text.length > 0);
});

// A relay that bills its own prices (OpenRouter) states each call's cost in its usage; the fake
// upstream adds it on request. Through tollgate the model, absent from the price table, is priced
// at that cost (the runner checks the ledger): whole, and streamed with its usage hidden.
test('a stated cost (OpenRouter usage.cost): passed through, and an unknown model streamed without usage', async () => {
  const opts = { headers: { 'x-fake-usage-extra': '{"cost":0.0042,"is_byok":false}' } };
  const stated = 'qwen/qwen3-235b-a22b';
  const completion = await client.chat.completions.create({ model: stated, messages }, opts);
  assert.equal(completion.usage.cost, 0.0042);
  const stream = await client.chat.completions.create({ model: stated, messages, stream: true }, opts);
  let text = '';
  for await (const chunk of stream) {
    assert.ok(chunk.usage == null, 'usage arrived without include_usage');
    text += chunk.choices[0]?.delta?.content ?? '';
  }
  assert.ok(text.length > 0);
});

test('tool call, non-stream: arguments parse as JSON', async () => {
  const completion = await client.chat.completions.create({ model, messages, tools });
  const choice = completion.choices[0];
  assert.equal(choice.finish_reason, 'tool_calls');
  const call = choice.message.tool_calls[0];
  assert.equal(call.type, 'function');
  assert.equal(call.function.name, 'get_weather');
  assert.equal(typeof JSON.parse(call.function.arguments).location, 'string');
});

test('tool call, stream: argument pieces assemble into JSON', async () => {
  const stream = await client.chat.completions.create({ model, messages, tools, stream: true });
  let name = '';
  let args = '';
  let finish = null;
  for await (const chunk of stream) {
    const delta = chunk.choices[0]?.delta;
    for (const call of delta?.tool_calls ?? []) {
      name += call.function?.name ?? '';
      args += call.function?.arguments ?? '';
    }
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(name, 'get_weather');
  assert.equal(finish, 'tool_calls');
  assert.equal(typeof JSON.parse(args).location, 'string');
});

test('embeddings: one 8-dim vector per input', async () => {
  // The SDK asks for base64 and decodes it, so this also checks the body arrives byte-exact.
  const result = await client.embeddings.create({ model: 'text-embedding-3-small', input: ['one', 'two'] });
  assert.equal(result.data.length, 2);
  for (const item of result.data) {
    assert.equal(item.embedding.length, 8);
    assert.ok(item.embedding.every(Number.isFinite));
  }
  assert.ok(result.usage.prompt_tokens > 0);
});

test('models: list and retrieve', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes('gpt-4.1'), `gpt-4.1 missing from ${ids}`);
  const m = await client.models.retrieve('gpt-4.1');
  assert.equal(m.id, 'gpt-4.1');
  assert.equal(m.object, 'model');
  // A relay's provider-prefixed id: the SDK sends /v1/models/openai%2Fgpt-4.1.
  const prefixed = await client.models.retrieve('openai/gpt-4.1');
  assert.equal(prefixed.id, 'openai/gpt-4.1');
});

test('stored chat completions list and model deletion: same paths as metered calls, other methods', async () => {
  const ids = [];
  for await (const c of client.chat.completions.list({ limit: 2 })) ids.push(c.id);
  assert.deepEqual(ids, ['chatcmpl-stored-1']);
  const deleted = await client.models.delete('ft:gpt-4.1:acme::x1');
  assert.equal(deleted.id, 'ft:gpt-4.1:acme::x1');
  assert.equal(deleted.deleted, true);
});

// Uploads are multipart/form-data bodies of arbitrary bytes, relayed unmetered (route other).
// The fake upstream answers with the size and SHA-256 of the `file` part it received.
test('uploads: files.create and audio.transcriptions pass binary multipart bodies byte for byte', async () => {
  const bytes = Buffer.alloc(3 * 1024 * 1024 + 17);
  for (let i = 0; i < bytes.length; ++i) bytes[i] = (i * 7919 + (i >> 11)) & 0xff;  // every byte value, no period of 2^n
  const sha256 = (b) => createHash('sha256').update(b).digest('hex');
  const file = await client.files.create({ file: await toFile(bytes, 'batch input.jsonl'), purpose: 'batch' });
  assert.equal(file.object, 'file');
  assert.equal(file.bytes, bytes.length);
  assert.equal(file.filename, 'batch input.jsonl');
  assert.equal(file.purpose, 'batch');
  assert.equal(file.fake_sha256, sha256(bytes));

  const audio = bytes.subarray(5, 200_005);
  const transcript = await client.audio.transcriptions.create({ file: await toFile(audio, 'speech.mp3'), model: 'whisper-1' });
  assert.equal(transcript.text, 'Fake transcription of 200000 bytes.');
  assert.equal(transcript.fake_sha256, sha256(audio));

  // A 9 MB recording: over 8 MiB, tollgate stores the form in a file, and must still read the
  // model the SDK sends after the file (run_sdk_test.sh checks both whisper-1 rows are priced).
  const long = Buffer.alloc(9 * 1000 * 1000);
  for (let i = 0; i < long.length; ++i) long[i] = (i * 7919 + (i >> 13)) & 0xff;
  const longTranscript = await client.audio.transcriptions.create({
    file: await toFile(long, 'meeting.mp3'), model: 'whisper-1', language: 'en',
  });
  assert.equal(longTranscript.text, `Fake transcription of ${long.length} bytes.`);
  assert.equal(longTranscript.fake_sha256, sha256(long));
});

// DALL-E answers without usage (tollgate bills it per image); the SDK must get the images whole.
test('images: dall-e-3 generation and a dall-e-2 variation (a form) come back whole', async () => {
  const generated = await client.images.generate({ model: 'dall-e-3', prompt: 'a toll gate', size: '1792x1024', quality: 'hd' });
  assert.equal(generated.data.length, 1);
  assert.ok(generated.data[0].url.startsWith('https://'));
  const png = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, ...Array(4096).fill(7)]);
  const variations = await client.images.createVariation({ image: await toFile(png, 'gate.png'), n: 2, size: '256x256' });
  assert.equal(variations.data.length, 2);
  assert.equal(variations.data[0].b64_json, 'aGVsbG8=');
});

test('chat with 40 MB of inline image (a base64 data: URL, over the old 32 MiB limit) is relayed', async () => {
  // OpenAI takes up to 50 MB of images in one request; max_body_bytes (64 MiB) is sized for it.
  const png = Buffer.alloc(30 * 1000 * 1000);
  png.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  for (let i = 8; i < png.length; ++i) png[i] = (i * 7919) & 0xff;
  const url = `data:image/png;base64,${png.toString('base64')}`;
  assert.ok(url.length > 40 * 1000 * 1000);
  const completion = await client.chat.completions.create({
    model,
    messages: [{ role: 'user', content: [{ type: 'text', text: 'What is in this image?' }, { type: 'image_url', image_url: { url } }] }],
  });
  assert.equal(completion.object, 'chat.completion');
  assert.ok(completion.choices[0].message.content.length > 0);
  assert.ok(completion.usage.prompt_tokens > 0);
});

test('uploads API: a 40 MB part, stored in a file (over 8 MiB), passes byte for byte', async () => {
  // The Uploads API takes parts of up to 64 MB; tollgate stores such a body in a file
  // (server.spool_dir) instead of holding it in memory.
  const part = Buffer.alloc(40 * 1000 * 1000 + 7);
  for (let i = 0; i < part.length; ++i) part[i] = (i * 7919 + (i >> 13)) & 0xff;
  const upload = await client.uploads.create({ bytes: part.length, filename: 'big.jsonl', mime_type: 'application/jsonl', purpose: 'batch' });
  assert.equal(upload.status, 'pending');
  assert.equal(upload.bytes, part.length);
  const added = await client.uploads.parts.create(upload.id, { data: await toFile(part, 'part-1') });
  assert.equal(added.object, 'upload.part');
  assert.equal(added.upload_id, upload.id);
  assert.equal(added.fake_bytes, part.length);
  assert.equal(added.fake_sha256, createHash('sha256').update(part).digest('hex'));
  const done = await client.uploads.complete(upload.id, { part_ids: [added.id] });
  assert.equal(done.status, 'completed');
  assert.equal(done.fake_parts, 1);
});

test('a 429 surfaces as RateLimitError with Retry-After', async () => {
  await assert.rejects(
    client.chat.completions.create({ model, messages }, { headers: { 'x-fake-status': '429' }, maxRetries: 0 }),
    (err) => {
      assert.ok(err instanceof OpenAI.RateLimitError, `got ${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 429);
      assert.equal(err.headers.get('retry-after'), '1');
      return true;
    },
  );
});

test('responses API, non-stream: output text and usage', async () => {
  const response = await client.responses.create({ model, input: 'Say hello to the SDK test.' });
  assert.equal(response.status, 'completed');
  assert.ok(response.output_text.length > 0);
  assert.ok(response.usage.input_tokens > 0);
  assert.equal(response.usage.total_tokens, response.usage.input_tokens + response.usage.output_tokens);
});

test('responses API, stream: deltas then response.completed with usage', async () => {
  const stream = await client.responses.create({ model, input: 'Say hello to the SDK test.', stream: true });
  const types = [];
  let text = '';
  let completed = null;
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === 'response.output_text.delta') text += event.delta;
    if (event.type === 'response.completed') completed = event.response;
  }
  assert.equal(types[0], 'response.created');
  assert.ok(text.length > 0);
  assert.ok(completed, `no response.completed among ${types}`);
  assert.ok(completed.usage.output_tokens > 0);
});

test('response headers: x-request-id via withResponse() and asResponse()', async () => {
  const { data, response } = await client.chat.completions.create({ model, messages }).withResponse();
  assert.ok(data.choices.length > 0);
  assert.ok(response.headers.get('x-request-id'), 'x-request-id missing');
  const raw = await client.chat.completions.create({ model, messages }).asResponse();
  assert.equal(raw.status, 200);
  assert.ok(raw.headers.get('x-request-id'), 'x-request-id missing');
  const body = await raw.json();
  assert.equal(body.object, 'chat.completion');
});

// The SDK's Realtime client always dials wss://<baseURL host>/…/realtime, so it reaches tollgate
// the way production does: through a TLS-terminating front (a load balancer; here a Node TLS
// server with a throwaway certificate that pipes bytes to the base URL's port).
test('realtime over WebSocket through a TLS-terminating front: session.created, then events both ways, response.done with usage', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tollgate-rt-'));
  const front = tls.createServer(
    (() => {
      execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
        '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem')], { stdio: 'ignore' });
      return { key: readFileSync(path.join(dir, 'key.pem')), cert: readFileSync(path.join(dir, 'cert.pem')) };
    })(),
    (socket) => {
      const inner = net.connect(Number(new URL(baseURL).port), new URL(baseURL).hostname);
      socket.pipe(inner).pipe(socket);
      inner.on('error', () => socket.destroy());
      socket.on('error', () => inner.destroy());
    },
  );
  await new Promise((resolve) => front.listen(0, '127.0.0.1', resolve));
  try {
    const viaFront = new OpenAI({
      baseURL: `https://127.0.0.1:${front.address().port}${new URL(baseURL).pathname}`,
      apiKey: process.env.OPENAI_API_KEY || 'sk-sdk-test',
      maxRetries: 0,
    });
    const rt = new OpenAIRealtimeWS({ model: 'gpt-realtime', options: { rejectUnauthorized: false } }, viaFront);
    const seen = [];
    let echo;
    const done = await new Promise((resolve, reject) => {
      rt.on('error', reject);
      rt.on('event', (event) => seen.push(event.type));
      rt.on('session.created', () => rt.send({ type: 'response.create', response: { modalities: ['text'] } }));
      rt.on('echo', (event) => { echo = event; });
      rt.on('response.done', resolve);
      setTimeout(() => reject(new Error(`no response.done; events: ${seen}`)), 10_000).unref();
    });
    assert.equal(seen[0], 'session.created');
    assert.equal(JSON.parse(echo.data).type, 'response.create');
    // The audio deltas (40 KB each) came through whole, and the usage tollgate meters.
    assert.equal(seen.filter((t) => t === 'response.output_audio.delta').length, 3);
    assert.equal(done.response.usage.input_tokens, 1000);
    assert.equal(done.response.usage.output_token_details.audio_tokens, 250);
    const closed = new Promise((resolve) => rt.socket.on('close', (code) => resolve(code)));
    rt.close();
    assert.equal(await closed, 1000);
  } finally {
    front.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

// The Responses API over one WebSocket (the SDK's ResponsesWS; the OpenAI Agents SDK's websocket
// transport): for an http:// base URL the SDK dials ws:// at <base>/responses, so it reaches
// tollgate directly. Two turns at two models, the second continuing the first; tollgate meters
// each response.completed at its own model (run_sdk_test.sh checks the session's ledger row).
test('responses API over WebSocket (ResponsesWS): two turns, each response.completed with usage', { skip: !ResponsesWS && `${sdk} has no ResponsesWS` }, async () => {
  const ws = new ResponsesWS(client);
  const completed = [];
  let text = '';
  try {
    await new Promise((resolve, reject) => {
      ws.on('error', reject);
      ws.on('event', (event) => {
        if (event.type === 'response.output_text.delta') text += event.delta;
        if (event.type !== 'response.completed') return;
        completed.push(event.response);
        if (completed.length === 2) return resolve();
        ws.send({ type: 'response.create', model: 'gpt-4.1-mini', input: 'Now say goodbye.', previous_response_id: event.response.id });
      });
      ws.send({ type: 'response.create', model, input: 'Say hello to the SDK test.' });
      setTimeout(() => reject(new Error(`${completed.length} of 2 responses completed`)), 10_000).unref();
    });
  } finally {
    ws.close();
  }
  assert.ok(text.length > 0);
  assert.deepEqual(completed.map((r) => r.model), [model, 'gpt-4.1-mini']);
  for (const r of completed) {
    assert.equal(r.status, 'completed');
    assert.ok(r.usage.input_tokens > 0 && r.usage.output_tokens > 0);
  }
});

// The Live API (the SDK's LiveWS: GET <base>/live/sessions): start a session with a Responses
// delegation, send audio, ask the delegate for a response, close. tollgate meters the audio
// seconds and the delegated response (run_sdk_test.sh checks the session's ledger row).
test('Live API session (LiveWS): audio seconds and a delegated response', { skip: !LiveWS && `${sdk} has no LiveWS` }, async () => {
  const ws = new LiveWS(client);
  const seen = { started: null, seconds: 0, completed: null, closed: null };
  try {
    await new Promise((resolve, reject) => {
      ws.on('error', reject);
      ws.on('event', (event) => {
        if (event.type === 'session.started') {
          seen.started = event.session;
          // 0.5 s of PCM16 silence at 24 kHz.
          ws.send({ type: 'session.input_audio.append', audio: Buffer.alloc(24_000).toString('base64') });
        } else if (event.type === 'session.usage.updated') {
          seen.seconds = event.usage.seconds;
          ws.send({ type: 'response.create' });
        } else if (event.type === 'response.event' && event.event.type === 'response.completed') {
          seen.completed = event.event.response;
          ws.send({ type: 'session.close' });
        } else if (event.type === 'session.closed') {
          seen.closed = event;
          resolve();
        }
      });
      ws.send({ type: 'session.start', session: { model: 'gpt-live-1', delegation: { type: 'responses', responses: { model } } } });
      setTimeout(() => reject(new Error(`Live session incomplete: ${JSON.stringify(seen)}`)), 10_000).unref();
    });
  } finally {
    ws.close();
  }
  assert.equal(seen.started.model, 'gpt-live-1');
  assert.equal(seen.seconds, 0.5);
  assert.equal(seen.completed.model, model);
  assert.ok(seen.completed.usage.input_tokens > 0);
  assert.equal(seen.closed.usage.seconds, 0.5);
});
