// ==UserScript==
// @name         LMArena API Bridge (test stand-in)
// @version      0.1
// @description  Plays LMArenaBridge's userscript for the harness: its fetch wrapper and its jobs, without a WebSocket.
// @match        https://lmarena.ai/*
// @match        https://*.lmarena.ai/*
// @grant        none
// @run-at       document-end
// ==/UserScript==

// What the real script does, as far as another script in the same tab can tell:
// - it wraps window.fetch (page world, @grant none) and takes ids from a retry URL only while its capture mode is on
//   and the request is not one of its own jobs (window.isApiBridgeRequest), then leaves capture mode;
// - for each job its server sends, it sets window.isApiBridgeRequest = true, PUTs the retry URL of the ids the
//   server gave, reads the streamed answer to the end, and sets the flag back to false whatever happened.
// Tests drive it through window.__bridgeStandIn instead of a WebSocket.
(function () {
  'use strict';

  const RETRY = /\/nextjs-api\/stream\/retry-evaluation-session-message\/([0-9a-f-]+)\/messages\/([0-9a-f-]+)/;
  const hook = {
    captureMode: false,
    captured: [],   // ids its wrapper took in capture mode
    calls: 0,       // fetch calls that went through its wrapper
    jobs: [],       // what each job read
    wrappedNative: false,
    wrapper: null,
    lastPromise: null,  // what its wrapper returned last
  };

  function urlOf(input) {
    if (typeof input === 'string') return input;
    if (input instanceof URL) return input.href;
    if (input instanceof Request) return input.url;
    return '';
  }

  const inner = window.fetch;
  hook.wrappedNative = /\[native code\]/.test(Function.prototype.toString.call(inner));
  hook.wrapper = function (...args) {
    hook.calls += 1;
    const found = RETRY.exec(urlOf(args[0]));
    if (found && hook.captureMode && !window.isApiBridgeRequest) {
      hook.captureMode = false;
      hook.captured.push({ session_id: found[1], message_id: found[2] });
    }
    hook.lastPromise = inner.apply(this, args);
    return hook.lastPromise;
  };
  window.fetch = hook.wrapper;

  hook.activateCapture = function () {
    hook.captureMode = true;
  };

  // One job as the bridge runs it; resolves with what it read once the stream ended (or failed).
  hook.runJob = async function (ids) {
    const job = {
      ids, status: 0, chunks: [], done: false, error: null, flagWhileReading: null, wrapperPromise: null,
    };
    hook.jobs.push(job);
    const body = { messages: [{ role: 'user', content: 'Say hello', id: crypto.randomUUID() }], modelId: null };
    window.isApiBridgeRequest = true;
    try {
      const pending = fetch(
        '/nextjs-api/stream/retry-evaluation-session-message/' + ids.session_id + '/messages/' + ids.message_id,
        {
          method: 'PUT',
          headers: { 'Content-Type': 'text/plain;charset=UTF-8' },
          body: JSON.stringify(body),
          credentials: 'include',
        },
      );
      // Whether the promise it got is the one its own wrapper returned (another wrapper outside passed it on as is).
      job.wrapperPromise = pending === hook.lastPromise;
      const response = await pending;
      job.status = response.status;
      if (!response.ok || !response.body) throw new Error('HTTP ' + response.status);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (let reads = 0; reads < 10000; reads++) {  // bounded: the fake's answer is a few lines
        const { value, done } = await reader.read();
        if (done) {
          job.done = true;
          break;
        }
        job.chunks.push(decoder.decode(value, { stream: true }));
      }
      job.flagWhileReading = window.isApiBridgeRequest;
    } catch (error) {
      job.error = String(error);
    } finally {
      window.isApiBridgeRequest = false;
    }
    return job;
  };

  window.__bridgeStandIn = hook;
})();
