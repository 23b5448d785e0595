// Command fleetcert rotates k3s certificates and certificate authorities
// across a fleet of clusters over SSH.
package main

import (
	"os"

	"github.com/fleetcert/fleetcert/cmd"
)

func main() {
	os.Exit(cmd.Execute())
}
