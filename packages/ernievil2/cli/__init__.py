"""Every command-line entry point (`python -m ernievil2 COMMAND`, run_infer.sh, run_train.sh, eval_retri.py).
Only this layer turns errors into messages and exit codes; nothing in the library imports it."""
