from bench.memory_eval.harness import main

main()
