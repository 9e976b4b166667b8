'use strict'
// node-postgres statements of every size around pgwake's buffer sizes, run
// by tests/drivers.rs.
//
// The statement is `select length('xxx...') + $1`, its padding chosen so that
// its text (as sent in Parse) is exactly SIZE bytes, for each of SIZES: just
// below, at and above the 512 bytes pgwake reads an idle client with, and far
// above (64 KiB, 1 MiB, 16 MiB). The answer is the padding's length plus the
// parameter, which differs from call to call. Each size runs in four
// situations, each on a connection of its own:
//
// - first: the statement is the first message of a fresh connection;
// - idle: after a short query and a pause, so pgwake has gone back to
//   waiting for an idle client;
// - transaction: begin, a short query, the statement, commit;
// - pipeline: several statements on a client made with `pipeline: true`,
//   started without waiting for answers, so they go out back to back (a
//   Sync after each). Without that option node-postgres queues them and
//   sends one only after the previous one's answer.
//
// and as unnamed (`{text, values}`) and named (`{name, text, values}`)
// statements alike. Every answer is checked. Each case has its own time
// limit (--case-timeout); a case past it is abandoned (its socket closed),
// reported, and the next one runs.
//
// Prints one summary line, `node-postgres: ok key=value ...`, last; exits
// non-zero on any wrong answer, unexpected error or the deadline.
//
// Usage: node long_statements.js --port PORT [--host HOST] [--dbname DB]
//            [--user USER] [--deadline SECONDS] [--case-timeout SECONDS]
//            [--sizes SIZE,...] [--situations SITUATION,...] [--kinds KIND,...]
//            (the last three: only some of the cases, to narrow down a failure)

const { Client } = require('pg')
const { parseOptions, Failed, expect, startRun, finishRun } = require('./common')

// Statement text lengths, in bytes; tests/drivers.rs has the same.
const SIZES = [300, 511, 512, 513, 600, 4096, 65536, 1 << 20, 16 << 20]
const SITUATIONS = ['first', 'idle', 'transaction', 'pipeline']
const KINDS = ['unnamed', 'named']
// Long enough for the idle path to run between the short query and the long
// statement.
const IDLE_PAUSE_MS = 150

// Statements in one pipeline: fewer for the big ones, to keep the run short.
// tests/drivers.rs has the same.
function pipelineLen(size) {
  if (size <= 64 * 1024) return 5
  if (size <= 1 << 20) return 3
  return 2
}

function options() {
  const list = (v) => v.split(',')
  const opts = parseOptions(
    { host: '127.0.0.1', port: 0, dbname: 'app', user: 'app', deadline: 180, 'case-timeout': 60, sizes: SIZES, situations: SITUATIONS, kinds: KINDS },
    { sizes: (v) => list(v).map(Number), situations: list, kinds: list }
  )
  for (const [key, every] of [['sizes', SIZES], ['situations', SITUATIONS], ['kinds', KINDS]]) {
    if (!opts[key].every((v) => every.includes(v))) throw new Error(`--${key}: each must be one of ${every}`)
  }
  return opts
}

// The long SELECT of `size` bytes, and its padding's length.
function selectOf(size) {
  const prefix = "select length('"
  const suffix = "') + $1"
  const pad = size - prefix.length - suffix.length
  const text = prefix + 'x'.repeat(pad) + suffix
  if (Buffer.byteLength(text) !== size) throw new Error(`statement of ${Buffer.byteLength(text)} bytes, not ${size}`)
  return { text, pad }
}

// The parameter of call j of case `c`: different for every call.
const param = (c, j) => 10 * c + j + 1

const tally = { statements: 0, short: 0, connections: 0 }

async function runCase(opts, c, kind, size, situation, clients, state) {
  const what = `${kind} size=${size} ${situation}`
  const { text, pad } = selectOf(size)
  const query = (sql, values, name) => ({ text: sql, values, ...(kind === 'named' ? { name } : {}) })
  const client = new Client({
    host: opts.host,
    port: opts.port,
    user: opts.user,
    database: opts.dbname,
    application_name: `node-long-${c}`,
    connectionTimeoutMillis: 10000,
    pipeline: situation === 'pipeline',
  })
  // A broken connection fails the query waiting on it, or the next one;
  // unhandled here, it would also end the process (an abandoned case's).
  client.on('error', () => {})
  clients.push(client)
  await client.connect()
  tally.connections += 1
  const long = async (j) => {
    const p = param(c, j)
    state.step = situation === 'pipeline' ? `pipeline of ${pipelineLen(size)} long statements` : `long statement ${j}`
    const r = await client.query(query(text, [p], `long_${size}`))
    expect(r.rows, [{ '?column?': pad + p }], what)
    tally.statements += 1
  }
  const short = async (j) => {
    const p = param(c, j)
    state.step = `short query ${j}`
    const r = await client.query(query('select $1::int + 1 as v', [p], 'short'))
    expect(r.rows, [{ v: p + 1 }], `${what}: short query`)
    tally.short += 1
  }
  try {
    if (situation === 'first') {
      await long(0)
    } else if (situation === 'idle') {
      await short(0)
      await new Promise((resolve) => setTimeout(resolve, IDLE_PAUSE_MS))
      await long(1)
    } else if (situation === 'transaction') {
      state.step = 'begin'
      await client.query('begin')
      await short(0)
      await long(1)
      state.step = 'commit'
      const r = await client.query('commit')
      expect(r.command, 'COMMIT', `${what}: commit`)
    } else {
      const calls = []
      for (let j = 0; j < pipelineLen(size); j++) calls.push(long(j))
      const settled = await Promise.allSettled(calls)
      const failed = settled.find((s) => s.status === 'rejected')
      if (failed) throw failed.reason
    }
  } finally {
    state.step = 'closing'
    await client.end()
  }
}

async function main() {
  const opts = options()
  const run = startRun('node-postgres', opts.deadline, 10000)
  const { deadline, errors } = run
  let c = 0
  for (const kind of KINDS) {
    for (const size of SIZES) {
      for (const situation of SITUATIONS) {
        if (!opts.kinds.includes(kind) || !opts.sizes.includes(size) || !opts.situations.includes(situation)) {
          c += 1
          continue
        }
        const what = `${kind} size=${size} ${situation}`
        const limit = Math.min(opts['case-timeout'] * 1000, deadline - Date.now())
        if (limit <= 0) {
          errors.push(`${what}: not run, deadline passed`)
          c += 1
          continue
        }
        const clients = []
        const state = { step: 'connecting' }
        let limitTimer
        const overdue = new Promise((resolve, reject) => {
          limitTimer = setTimeout(() => reject(new Error(`no answer within ${(limit / 1000).toFixed(1)}s (${state.step})`)), limit)
        })
        try {
          await Promise.race([runCase(opts, c, kind, size, situation, clients, state), overdue])
        } catch (e) {
          errors.push(`${what}: ${e && e.stack ? e.stack : e}`)
          for (const client of clients) {
            if (client.connection && client.connection.stream) client.connection.stream.destroy()
          }
        } finally {
          clearTimeout(limitTimer)
        }
        c += 1
      }
    }
  }
  finishRun(
    'node-postgres',
    run,
    `sizes=${new Set(opts.sizes).size} situations=${new Set(opts.situations).size} ` +
      `kinds=${new Set(opts.kinds).size} largest=${Math.max(...opts.sizes)}`,
    tally,
  )
  // Abandoned cases may leave sockets or timers behind.
  process.exit(process.exitCode)
}

main().catch((e) => {
  console.log(`node-postgres: FAILED ${e && e.stack ? e.stack : e}`)
  process.exit(1)
})
