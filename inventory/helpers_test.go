package inventory

// Lookups only the tests need: fleetcert itself walks Cluster.Nodes and
// Inventory.Clusters, or selects with Select.

// isServer tells whether the node runs the k3s server.
func (n Node) isServer() bool { return n.Role == Server }

// servers returns the cluster's servers in file order.
func (c Cluster) servers() []Node { return c.byRole(Server) }

// agents returns the cluster's agents in file order.
func (c Cluster) agents() []Node { return c.byRole(Agent) }

func (c Cluster) byRole(r Role) []Node {
	var out []Node
	for _, n := range c.Nodes {
		if n.Role == r {
			out = append(out, n)
		}
	}
	return out
}

// node returns the cluster's node with the given name.
func (c Cluster) node(name string) (Node, bool) {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// cluster returns the cluster with the given name.
func (inv *Inventory) cluster(name string) (Cluster, bool) {
	for _, c := range inv.Clusters {
		if c.Name == name {
			return c, true
		}
	}
	return Cluster{}, false
}
