#!/usr/bin/env node
// Validates an AsyncAPI document with the official parser (@asyncapi/parser 3.x).
//
// Usage: node tools/asyncapi/check.mjs FILE
// Prints every diagnostic of severity error and the number of warnings; exits 1 when the
// document has errors (or does not parse at all), 2 on bad usage or an unreadable file.
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const SEVERITY = ['error', 'warning', 'information', 'hint'];

function location(diagnostic) {
  const start = diagnostic.range?.start;
  return start ? `${start.line + 1}:${start.character + 1}` : '?:?';
}

function render(file, diagnostic) {
  const severity = SEVERITY[diagnostic.severity] ?? String(diagnostic.severity);
  const path = (diagnostic.path ?? []).join('.');
  return `${file}:${location(diagnostic)}: ${severity} ${diagnostic.code}: ${diagnostic.message}` +
    (path ? ` (at ${path})` : '');
}

async function main(argv) {
  const file = argv[2];
  if (!file || argv.length > 3) {
    console.error('usage: node check.mjs FILE');
    return 2;
  }
  let source;
  try {
    source = await readFile(file, 'utf8');
  } catch (err) {
    console.error(`${file}: cannot read: ${err.message}`);
    return 2;
  }
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(source, { source: resolve(file) });
  const count = (severity) => diagnostics.filter((d) => d.severity === severity).length;
  const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
  for (const diagnostic of errors) {
    console.error(render(file, diagnostic));
  }
  if (process.env.ASYNCAPI_CHECK_VERBOSE) {
    for (const d of diagnostics.filter((d) => d.severity !== DiagnosticSeverity.Error)) {
      console.error(render(file, d));
    }
  }
  const warnings = count(DiagnosticSeverity.Warning);
  const status = errors.length === 0 && document !== undefined ? 'ok' : 'FAILED';
  console.log(`${file}: ${status}: ${errors.length} error(s), ${warnings} warning(s)`);
  return status === 'ok' ? 0 : 1;
}

process.exitCode = await main(process.argv);
