# kubeca — the commands a new user needs. See README.md.
.PHONY: test demo bench soak e2e-matrix setup

setup:
	scripts/setup.sh

# Every test of the workspace: unit, integration (real sshd/openssl), and the testbed tier (the
# testbed's own checks; then, on two testbeds side by side, a rotation with a window pause and
# seeded kills, and rollbacks from prepare, the gate and mid-finalize). See CONTRIBUTING.md.
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

# Every end-to-end scenario (the uninterrupted rotation, the faults, a rollback from every
# phase) on two 3+2 testbeds side by side; prints each scenario's figures. Not part of make test.
e2e-matrix: setup
	cargo build --locked -p kubeca
	KUBECA_E2E_TIER=matrix cargo test --locked -p kubeca-tests --test rotation_e2e -- --nocapture
