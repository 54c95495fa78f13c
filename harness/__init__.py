"""The benchmark harness: measuring one configuration safely, in child processes (the benchmark
process, the compile pool, the cross-build process), with the timing rules and the JSON-lines
protocol they speak. Knows nothing of jobs, studies or the database."""
