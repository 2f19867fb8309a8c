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

# The crash matrix on a 3+2 testbed (tens of minutes): a kill inside and after every step of
# a rotation and of a rollback; prints the table of RELIABILITY.md.
soak: setup
	cargo build --locked -p kubeca
	cargo test --locked -p kubeca-tests --test soak
