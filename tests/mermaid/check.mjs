#!/usr/bin/env node
// Parse Mermaid diagrams with the real mermaid package (Node + jsdom, no browser), for the test suite.
// Modelled on ../shared/tools/mermaid-check (check.mjs --parse-only); the suite carries its own copy.
//
//   node check.mjs [--mermaid mermaid|mermaid-v11] < diagrams.json    (a JSON array of diagram texts)
//
// Prints one JSON object: {mermaid: version, results: [{ok, error, diagramType, model{nodes,edges,subgraphs},
// textSize, problems[]}]}. A diagram fails on a parse error, more than maxEdges edges (mermaid throws while
// parsing), more than maxTextSize characters (render would draw a placeholder; parse does not check), or a
// flowchart with no nodes. Exit status: 0 all ok, 1 some failed, 2 setup/usage problem.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(HERE, 'package.json'));
const MAX_TEXT = 50000;

function die(msg) { console.error(`check.mjs: ${msg}`); process.exit(2); }

let pkg = 'mermaid';
for (let i = 2; i < process.argv.length; i++) {
  if (process.argv[i] === '--mermaid') pkg = process.argv[++i];
  else die(`unknown argument ${process.argv[i]}`);
}

// what mermaid compares with maxTextSize: frontmatter, directives and %% comments removed
function cleanedLength(code) {
  let t = code.replace(/\r\n?/g, '\n');
  t = t.replace(/^\s*---\n[\s\S]*?\n---\s*\n/, '');
  t = t.replace(/%%\{[\s\S]*?\}%%\n?/g, '');
  t = t.replace(/^\s*%%(?!\{)[^\n]*\n?/gm, '');
  return t.length;
}

let pj;
try { pj = require.resolve(`${pkg}/package.json`); } catch { die(`package '${pkg}' missing: run npm ci in ${HERE}`); }
const version = JSON.parse(readFileSync(pj, 'utf8')).version;
const { JSDOM } = require('jsdom');
const dom = new JSDOM('<!DOCTYPE html><html><body></body></html>', { pretendToBeVisual: true });
// DOMPurify binds to `window` when mermaid is imported: without it every parse fails
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const mermaid = (await import(pathToFileURL(join(dirname(pj), 'dist', 'mermaid.core.mjs')).href)).default;
mermaid.initialize({ startOnLoad: false, logLevel: 5 });

const diagrams = JSON.parse(readFileSync(0, 'utf8'));
if (!Array.isArray(diagrams)) die('stdin must be a JSON array of strings');
const results = [];
for (const code of diagrams) {
  const r = { ok: false, problems: [], textSize: cleanedLength(code) };
  try {
    const p = await mermaid.parse(code);
    r.diagramType = p.diagramType;
    const db = (await mermaid.mermaidAPI.getDiagramFromText(code))?.db;
    if (db && typeof db.getVertices === 'function') {
      const v = db.getVertices();
      r.model = { nodes: v instanceof Map ? v.size : Object.keys(v).length, edges: db.getEdges().length,
        subgraphs: db.getSubGraphs?.().length ?? 0 };
      if (r.model.nodes === 0) r.problems.push('flowchart has no nodes');
    }
  } catch (e) {
    r.error = String(e?.message ?? e).trim();
    r.problems.push(`parse error: ${r.error}`);
  }
  if (r.textSize > MAX_TEXT) r.problems.push(`text size ${r.textSize} > maxTextSize ${MAX_TEXT}`);
  r.ok = r.problems.length === 0;
  results.push(r);
}
console.log(JSON.stringify({ mermaid: version, results }));
process.exit(results.every((r) => r.ok) ? 0 : 1);
