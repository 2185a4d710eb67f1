// Routes console.* to the gateway's log (host.log), so a stray console.log in
// a hook (or a library it uses) ends up in the gateway's structured log
// instead of nowhere (StarlingMonkey without stdio) or a trap (QuickJS with
// WASI stubbed out). Import it first.

import { log } from 'gateway:hooks/host@0.1.0';

function format(args) {
  return args
    .map((a) => {
      if (typeof a === 'string') {
        return a;
      }
      try {
        return JSON.stringify(a) ?? String(a);
      } catch {
        return String(a);
      }
    })
    .join(' ');
}

const levels = { trace: 'trace', debug: 'debug', log: 'info', info: 'info', warn: 'warn', error: 'error' };

globalThis.console = Object.fromEntries(
  Object.entries(levels).map(([method, level]) => [method, (...args) => log(level, format(args), [])]),
);
