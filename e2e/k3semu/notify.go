package main

import (
	"net"
)

// sdNotify sends state (e.g. "READY=1") to systemd over $NOTIFY_SOCKET, a
// unixgram socket ('@' prefix = abstract namespace). No socket: no-op.
// The variable is read through e.Getenv: after the process-title hiding
// re-exec (hide.go) the process's own environment no longer holds it.
func (e *Env) sdNotify(state string) error {
	sock := e.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return nil
	}
	if sock[0] == '@' {
		sock = "\x00" + sock[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}
