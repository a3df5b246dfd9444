// A Node.js HotPocket contract written against the interface of the npm package
// `hotpocket-nodejs-contract` (EvernodeXRPL/hp-nodejs-contract), as Evernode bundles are:
// contract.config {"bin_path": "/usr/bin/node", "bin_args": "index.js"}. It runs in the
// instance image berth-hotpocket-node:latest (hotpocket/image/build-node.sh).
//
// For every input it sends two outputs to its user: "Echoing: <input>" and a JSON object
// {node, count, lcl, unl} (the Node.js version, how many inputs the contract has seen, the
// last closed ledger and the UNL's size). The count is kept in count.txt in the state
// directory (the working directory), so it persists across ledgers.
const HotPocket = require("hotpocket-nodejs-contract");
const fs = require("fs");

const echoContract = async (ctx) => {
    let count = 0;
    try {
        count = parseInt(fs.readFileSync("count.txt", "utf8"), 10) || 0;
    } catch (e) {
        // First run: no count yet.
    }
    const userHandlers = [];
    for (const user of ctx.users.list()) {
        userHandlers.push((async () => {
            // One user's outputs in the order of its inputs.
            for (const input of user.inputs) {
                const buf = await ctx.users.read(input);
                count += 1;
                await user.send("Echoing: " + buf.toString());
                await user.send({
                    node: process.version,
                    count,
                    lcl: ctx.lclSeqNo,
                    unl: ctx.unl.count(),
                });
            }
        })());
    }
    await Promise.all(userHandlers);
    if (!ctx.readonly) {
        fs.writeFileSync("count.txt", String(count));
    }
};

const hpc = new HotPocket.Contract();
hpc.init(echoContract);
