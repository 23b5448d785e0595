package orchestrator

import (
	"testing"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
)

// TestInventoryDefaultsAreTheProducts: the inventory fills in what each
// product's installer uses, which k3s.Layout knows; inventory imports no
// fleetcert package, so this test keeps the two copies one.
func TestInventoryDefaultsAreTheProducts(t *testing.T) {
	for _, p := range k3s.Products() {
		d, c, s, a, ok := k3s.ProductDefaults(p)
		id, ic, is, ia := inventory.ProductDefaults(p)
		if !ok || d != id || c != ic || s != is || a != ia {
			t.Errorf("%s: k3s has %q %q %q %q, inventory %q %q %q %q", p, d, c, s, a, id, ic, is, ia)
		}
		l := layoutOf(inventory.Node{Product: p, Role: inventory.Agent, DataDir: id, ConfigFile: ic, Service: ia})
		if l.ProductName() != p || l.UnitName() != a {
			t.Errorf("%s: layout %+v", p, l)
		}
	}
}
