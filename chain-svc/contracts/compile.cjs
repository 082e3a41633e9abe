// Compiles MedchainAudit.sol with the pinned solcjs (npm `solc`, offline) and writes the
// artifact the service builds its bindings from. `--check` compares instead of writing and
// exits 1 when the committed artifact differs from a fresh compile.
//   node chain-svc/contracts/compile.cjs [--check]      (NODE_PATH must reach `solc`)
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const SOURCE = "MedchainAudit.sol";
const CONTRACT = "MedchainAudit";
const dir = __dirname;
const out = path.join(dir, `${CONTRACT}.json`);
const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  metadata: { bytecodeHash: "none" },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};
const input = {
  language: "Solidity",
  sources: { [SOURCE]: { content: fs.readFileSync(path.join(dir, SOURCE), "utf8") } },
  settings,
};
const result = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (result.errors || []).filter((e) => e.severity === "error");
for (const e of result.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(2);
const c = result.contracts[SOURCE][CONTRACT];
const artifact = {
  contractName: CONTRACT,
  compiler: { name: "solc (solcjs, npm)", version: solc.version() },
  settings: { optimizer: settings.optimizer, evmVersion: settings.evmVersion, metadata: settings.metadata },
  abi: c.abi,
  bytecode: "0x" + c.evm.bytecode.object,
  deployedBytecode: "0x" + c.evm.deployedBytecode.object,
};
const text = JSON.stringify(artifact, null, 2) + "\n";
if (process.argv.includes("--check")) {
  const committed = fs.existsSync(out) ? fs.readFileSync(out, "utf8") : "";
  if (committed !== text) {
    console.error(`${out} differs from a fresh compile of ${SOURCE}: run node ${path.relative(process.cwd(), __filename)}`);
    process.exit(1);
  }
  console.log(`${CONTRACT}.json matches a fresh compile (solc ${solc.version()})`);
} else {
  fs.writeFileSync(out, text);
  console.log(`wrote ${out} (solc ${solc.version()})`);
}
