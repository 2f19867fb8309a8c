# kubeca — the commands a new user needs. See README.md.
.PHONY: test demo bench soak setup

setup:
	scripts/setup.sh

# Every test of the workspace: unit, integration (real sshd/openssl), testbed.
test: setup
	cargo test --workspace --locked

# The main job: a local 3+2 cluster rotated end to end.
demo: setup
	scripts/demo.sh

# Benchmarks; figures go to BENCHMARKS.md.
bench:
	cargo bench -p journal --bench journal
	cargo bench -p engine --bench engine
	cargo bench -p actions --bench plan

soak:
	@echo "make soak: the crash matrix is not built yet." >&2
	@exit 1
