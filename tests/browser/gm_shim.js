// Tampermonkey stand-in for one userscript, run as a Playwright init script in every frame at document start.
// harness.py appends `(config, factory)`: factory(scope) returns the userscript as a function whose free names
// resolve through `scope` (a sandbox proxy when the script @grant-s anything, as in Tampermonkey).
(function tampermonkeyShim(config, factory) {
  'use strict';
  const win = window;
  const guard = Symbol.for('tm-harness:' + config.token);
  if (win[guard]) return; // a second copy of this init script (values were just re-installed): run once
  Object.defineProperty(win, guard, { value: true });

  const href = String(win.location.href).split('#')[0];
  const isTop = win === win.top;
  const test = (list) => list.some(([source, flags]) => new RegExp(source, flags).test(href));
  if (config.noframes && !isTop) return;
  if (!(test(config.matches) || test(config.includes)) || test(config.excludes)) return;

  // Keep what the page may replace later (it runs after us) and hide the harness bindings from it.
  const take = (name) => {
    const fn = win[name];
    try { delete win[name]; } catch (e) { /* not configurable: leave it */ }
    return fn;
  };
  const xhrBinding = take(config.bindings.xhr);
  const valueBinding = take(config.bindings.value);
  const eventBinding = take(config.bindings.event);
  const setTimeout_ = win.setTimeout.bind(win);
  const { parse, stringify } = JSON;
  const log = win.console.log.bind(win.console);
  const quiet = (promise) => { promise.catch(() => {}); };
  const later = (fn) => setTimeout_(fn, 0); // errors thrown in callbacks surface as page errors

  // GM_*Value: a synchronous cache seeded from the run's store; every change is sent back to Python.
  const store = Object.assign(Object.create(null), config.values);
  const clone = (value) => (value === undefined ? undefined : parse(stringify(value)));
  const GM_getValue = (key, fallback) => (String(key) in store ? clone(store[String(key)]) : fallback);
  const GM_deleteValue = (key) => {
    delete store[String(key)];
    quiet(valueBinding({ op: 'delete', key: String(key) }));
  };
  const GM_setValue = (key, value) => {
    if (value === undefined) return GM_deleteValue(key);
    store[String(key)] = clone(value);
    quiet(valueBinding({ op: 'set', key: String(key), value: store[String(key)] }));
  };
  const GM_listValues = () => Object.keys(store);

  // GM_xmlhttpRequest: Python performs the request (no CORS, @connect enforced) and answers with the outcome.
  const requestBody = (data) => {
    if (data === undefined || data === null) return null;
    if (typeof data === 'string') return data;
    if (data instanceof win.URLSearchParams) return data.toString();
    if (data instanceof win.Blob || data instanceof win.FormData) {
      throw new TypeError('harness GM_xmlhttpRequest: Blob/FormData data is not supported');
    }
    return stringify(data);
  };
  function GM_xmlhttpRequest(details) {
    details = details || {};
    const state = { done: false };
    const fire = (names, result) => later(() => {
      for (const name of names) if (typeof details[name] === 'function') details[name].call(details, result);
    });
    const respond = (outcome) => {
      const text = outcome.responseText || '';
      let response = text;
      if (details.responseType === 'json') {
        try { response = parse(text); } catch (e) { response = undefined; }
      }
      return {
        readyState: 4, status: outcome.status || 0, statusText: outcome.statusText || '',
        responseHeaders: outcome.responseHeaders || '', responseText: text, response,
        finalUrl: outcome.finalUrl || '', context: details.context, error: outcome.error,
      };
    };
    try {
      const request = {
        method: String(details.method || 'GET').toUpperCase(),
        url: new win.URL(String(details.url), win.location.href).href,
        headers: Object.fromEntries(Object.entries(details.headers || {}).map(([k, v]) => [String(k), String(v)])),
        data: requestBody(details.data),
        timeout: Number(details.timeout) || 0,
      };
      xhrBinding(request).then((outcome) => {
        if (state.done) return;
        state.done = true;
        const result = respond(outcome);
        if (outcome.kind === 'load') fire(['onreadystatechange', 'onload', 'onloadend'], result);
        else fire([outcome.kind === 'timeout' ? 'ontimeout' : 'onerror', 'onloadend'], result);
      }, (error) => {
        if (!state.done) { state.done = true; fire(['onerror', 'onloadend'], respond({ error: String(error) })); }
      });
    } catch (error) {
      state.done = true;
      fire(['onerror', 'onloadend'], respond({ error: String(error) }));
    }
    return {
      abort() {
        if (state.done) return;
        state.done = true;
        fire(['onabort', 'onloadend'], respond({ error: 'aborted' }));
      },
    };
  }
  const promised = (details) => new Promise((resolve, reject) => {
    GM_xmlhttpRequest(Object.assign({}, details, {
      onload: (r) => { if (details.onload) details.onload(r); resolve(r); },
      onerror: (r) => { if (details.onerror) details.onerror(r); reject(r); },
      ontimeout: (r) => { if (details.ontimeout) details.ontimeout(r); reject(r); },
      onabort: (r) => { if (details.onabort) details.onabort(r); reject(r); },
    }));
  });

  const api = {
    GM_xmlhttpRequest, GM_getValue, GM_setValue, GM_deleteValue, GM_listValues,
    GM_addStyle(css) {
      const style = win.document.createElement('style');
      style.textContent = String(css);
      (win.document.head || win.document.documentElement).appendChild(style);
      return style;
    },
    GM_log: (...args) => log(...args),
    GM_registerMenuCommand(name) { quiet(eventBinding({ type: 'menu', name: String(name) })); return String(name); },
    GM_notification(details) {
      const text = typeof details === 'string' ? details : (details && details.text) || '';
      quiet(eventBinding({ type: 'notification', text: String(text) }));
    },
  };
  const asyncApi = {
    xmlHttpRequest: promised,
    getValue: async (key, fallback) => GM_getValue(key, fallback),
    setValue: async (key, value) => GM_setValue(key, value),
    deleteValue: async (key) => GM_deleteValue(key),
    listValues: async () => GM_listValues(),
  };

  // Only what is granted exists, as in Tampermonkey; GM_info always does.
  const scope = Object.create(null);
  scope.GM_info = config.info;
  const gm = { info: config.info };
  for (const grant of config.grants) {
    if (grant in api) scope[grant] = api[grant];
    else if (grant.startsWith('GM.') && grant.slice(3) in asyncApi) gm[grant.slice(3)] = asyncApi[grant.slice(3)];
  }
  scope.GM = gm;
  let sandbox = win;
  if (!config.sandboxed) {
    scope.unsafeWindow = win;
  } else {
    if (config.grants.includes('unsafeWindow')) scope.unsafeWindow = win;
    // The script's `window` is a wrapper: reads fall through to the page, writes stay in the sandbox.
    const bound = new WeakMap();
    sandbox = new Proxy(scope, {
      has: (target, key) => typeof key === 'string',
      get(target, key) {
        if (key === 'window' || key === 'self' || key === 'globalThis') return sandbox;
        if (key in target) return target[key];
        if (key === Symbol.unscopables) return undefined;
        const value = win[key];
        // Natives such as fetch or setTimeout throw "Illegal invocation" unless called on the real window.
        if (typeof value !== 'function' || 'prototype' in value) return value;
        if (!bound.has(value)) bound.set(value, value.bind(win));
        return bound.get(value);
      },
      set(target, key, value) { target[key] = value; return true; },
      deleteProperty(target, key) { delete target[key]; return true; },
    });
  }

  const run = () => {
    quiet(eventBinding({ type: 'ran', url: href, top: isTop }));
    try {
      factory(config.sandboxed ? sandbox : scope).call(sandbox);
    } catch (error) {
      later(() => { throw error; });
    }
  };
  const whenReady = (fn) => {
    if (win.document.readyState === 'loading') win.document.addEventListener('DOMContentLoaded', fn, { once: true });
    else fn();
  };
  if (config.runAt === 'document-start') run();
  else if (config.runAt === 'document-end') whenReady(run);
  else if (config.runAt === 'document-idle') whenReady(() => later(run));
  else if (config.runAt === 'document-body') {
    if (win.document.body) run();
    else {
      const observer = new win.MutationObserver(() => {
        if (win.document.body) { observer.disconnect(); run(); }
      });
      observer.observe(win.document, { childList: true, subtree: true });
    }
  }
  // context-menu: never runs here (there is no menu).
})
