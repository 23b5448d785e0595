package cmd

// Every node check has in flight holds a socket (its SSH connection) and,
// while it dials, may hold another (the ssh-agent's); the process itself
// needs a few dozen more (standard streams, the runtime's poller, the
// inventory, known_hosts and output files).
const (
	filesPerNode   = 2
	filesReserved  = 32
	minConcurrency = 1
)

// fitConcurrency is the concurrency that fits in limit open files: want
// when it does, else as many nodes as the limit leaves room for (at least
// one), and the files want would have needed.
func fitConcurrency(want int, limit uint64) (fit, need int) {
	need = want*filesPerNode + filesReserved
	if uint64(need) <= limit {
		return want, need
	}
	fit = minConcurrency
	if limit > filesReserved+filesPerNode {
		fit = max(minConcurrency, int((limit-filesReserved)/filesPerNode))
	}
	return min(fit, want), need
}
