// Child-process entry: `node --import tsx bench/case.ts <case>` prints that case's JSON line.
import { runCase } from './cases.ts';
import { report } from './util.ts';

report(await runCase(process.argv[2]));
