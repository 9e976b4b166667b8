// What the node-postgres driver scripts in this folder share: their
// command line, the check of one answer, and the run's deadline.
'use strict'

// Reads `--key value` pairs over `defaults`; `parse[key]` turns a value
// into what the key holds (numbers by default, text for text defaults).
function parseOptions(defaults, parse = {}) {
  const opts = { ...defaults }
  const argv = process.argv.slice(2)
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '')
    if (!(key in opts) || argv[i + 1] === undefined) {
      throw new Error(`unknown or incomplete option ${argv[i]}`)
    }
    const value = argv[i + 1]
    if (parse[key]) opts[key] = parse[key](value)
    else opts[key] = typeof opts[key] === 'string' ? value : Number(value)
  }
  if (!opts.port) throw new Error('--port is required')
  return opts
}

class Failed extends Error {}

function expect(actual, wanted, what) {
  const a = JSON.stringify(actual)
  const w = JSON.stringify(wanted)
  if (a !== w) throw new Failed(`${what}: got ${a}, expected ${w}`)
}

// The run's deadline; past it plus `graceMs` the process ends with a
// FAILED line, whatever it is waiting for.
function startRun(mode, deadlineSecs, graceMs) {
  const started = Date.now()
  const timer = setTimeout(() => {
    console.log(`${mode}: FAILED deadline of ${deadlineSecs}s passed`)
    process.exit(1)
  }, deadlineSecs * 1000 + graceMs)
  return { started, deadline: started + deadlineSecs * 1000, errors: [], timer }
}

// Ends the run: prints each error, then the summary line the tests read
// (`MODE: ok|FAILED errors=N <head> key=value… seconds=S`), and sets the
// exit code.
function finishRun(mode, run, head, tally) {
  clearTimeout(run.timer)
  for (const e of run.errors) console.error(`${mode}: ERROR ${e}`)
  const fields = Object.keys(tally)
    .sort()
    .map((key) => `${key}=${tally[key]}`)
    .join(' ')
  const status = run.errors.length === 0 ? 'ok' : `FAILED errors=${run.errors.length}`
  const seconds = ((Date.now() - run.started) / 1000).toFixed(1)
  console.log(`${mode}: ${status} ${head} ${fields} seconds=${seconds}`)
  process.exitCode = run.errors.length === 0 ? 0 : 1
}

module.exports = { parseOptions, Failed, expect, startRun, finishRun }
