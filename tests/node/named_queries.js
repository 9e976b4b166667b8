'use strict'
// node-postgres named queries through pgwake, run by tests/drivers.rs.
//
// Every client uses the same statement names ('times', 'pair', 'series',
// 'shared', 'divide', 'insert'), and under most of them its own SQL: a
// pooler that relayed names as they are would give one client another's
// statement. node-postgres parses a name once per connection, then sends
// only Bind/Execute for it. Half the clients pipeline (every query sent at
// once, a Sync after each). Each answer is checked against the client's own
// statement; transactions commit or roll back; an expected error (division
// by zero) comes back on its own query only.
//
// Prints one summary line, `node-postgres: ok key=value ...`, last; exits
// non-zero on any wrong answer, unexpected error or the deadline.
//
// The table `driver_rows (client text, n int)` must exist.
//
// Usage: node named_queries.js --port PORT [--host HOST] [--clients N]
//            [--iterations N] [--deadline SECONDS]

const { Client } = require('pg')
const { parseOptions, Failed, expect, startRun, finishRun } = require('./common')

function options() {
  return parseOptions({ host: '127.0.0.1', port: 0, clients: 20, iterations: 30, deadline: 180 })
}

const tally = { queries: 0, commits: 0, rollbacks: 0, expected_errors: 0, committed_rows: 0 }

// The constant of client c's statement j: different for every statement of
// every client.
const kOf = (c, j) => 1000 * (c + 1) + j

async function runClient(opts, c, deadline) {
  const name = `node-${c}`
  const pipeline = c % 2 === 1
  const k = [1, 2, 3, 4].map((j) => kOf(c, j))
  const client = new Client({
    host: opts.host,
    port: opts.port,
    user: 'app',
    database: 'app',
    application_name: name,
    connectionTimeoutMillis: 30000,
    pipeline,
  })
  await client.connect()
  let committed = 0
  try {
    const statements = {
      times: `select $1::int * ${k[0]} as v`,
      pair: `select $1::int + ${k[1]} as n, $2::text as s`,
      series: `select g * ${k[2]} as v from generate_series(1, $1::int) g`,
      shared: 'select $1::int * 7 as v',
      divide: `select ${k[3]} / $1::int as v`,
      insert: 'insert into driver_rows (client, n) values ($1, $2)',
    }
    const q = (stmt, values) => client.query({ name: stmt, text: statements[stmt], values })
    const checks = (i, what) => [
      () => q('times', [i]).then((r) => expect(r.rows, [{ v: i * k[0] }], `${what}: times`)),
      () => q('pair', [i, name]).then((r) => expect(r.rows, [{ n: i + k[1], s: name }], `${what}: pair`)),
      () =>
        q('series', [(i % 4) + 1]).then((r) => {
          const want = []
          for (let g = 1; g <= (i % 4) + 1; g++) want.push({ v: g * k[2] })
          expect(r.rows, want, `${what}: series`)
        }),
      () => q('shared', [i]).then((r) => expect(r.rows, [{ v: i * 7 }], `${what}: shared`)),
    ]
    // Runs steps (functions that start a query): a pipelining client starts
    // them all at once, the others one after another.
    const run = async (steps) => {
      if (!pipeline) {
        for (const step of steps) await step()
        return
      }
      const settled = await Promise.allSettled(steps.map((step) => step()))
      const failed = settled.find((s) => s.status === 'rejected')
      if (failed) throw failed.reason
    }
    for (let i = 0; i < opts.iterations; i++) {
      if (Date.now() > deadline) throw new Error('deadline passed')
      const what = `${name} iteration ${i}`
      await run(checks(i, what))
      tally.queries += 4
      if (i % 4 === 0) {
        await run([
          () => client.query('begin'),
          () => q('insert', [name, i]).then((r) => expect(r.rowCount, 1, `${what}: insert`)),
          () => q('times', [i + 1]).then((r) => expect(r.rows, [{ v: (i + 1) * k[0] }], `${what}: times in tx`)),
          () => client.query('commit').then((r) => expect(r.command, 'COMMIT', `${what}: commit`)),
        ])
        committed += 1
        tally.queries += 4
        tally.commits += 1
        tally.committed_rows += 1
      } else if (i % 6 === 3) {
        await run([
          () => client.query('begin'),
          () => q('insert', [name, -i]).then((r) => expect(r.rowCount, 1, `${what}: insert`)),
          () => client.query('rollback').then((r) => expect(r.command, 'ROLLBACK', `${what}: rollback`)),
        ])
        tally.queries += 3
        tally.rollbacks += 1
      }
      // Division by zero on every fifth iteration: only that query fails,
      // in a pipeline too.
      const zero = i % 5 === 2
      const divide = () =>
        q('divide', [zero ? 0 : i + 1]).then(
          (r) => {
            if (zero) throw new Failed(`${what}: division by zero succeeded`)
            expect(r.rows, [{ v: Math.trunc(k[3] / (i + 1)) }], `${what}: divide`)
          },
          (e) => {
            if (!zero || e.code !== '22012') throw e
            tally.expected_errors += 1
          },
        )
      const after = () =>
        q('times', [i + 2]).then((r) => expect(r.rows, [{ v: (i + 2) * k[0] }], `${what}: after divide`))
      await run([divide, after])
      tally.queries += 2
    }
    const r = await client.query('select count(*)::int as n from driver_rows where client = $1', [name])
    tally.queries += 1
    expect(r.rows, [{ n: committed }], `${name}: rows committed`)
  } finally {
    await client.end()
  }
}

async function main() {
  const opts = options()
  const run = startRun('node-postgres', opts.deadline, 5000)
  const { deadline, errors } = run
  const clients = []
  for (let c = 0; c < opts.clients; c++) {
    clients.push(
      runClient(opts, c, deadline).catch((e) => {
        errors.push(`client ${c}: ${e && e.stack ? e.stack : e}`)
      }),
    )
  }
  await Promise.all(clients)
  finishRun('node-postgres', run, `clients=${opts.clients}`, tally)
}

main().catch((e) => {
  console.log(`node-postgres: FAILED ${e && e.stack ? e.stack : e}`)
  process.exit(1)
})
