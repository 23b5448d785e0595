package harness

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"

	"github.com/fleetcert/fleetcert/e2e/image/build"
)

// Labels on everything the harness creates.
const (
	labelKey   = build.LabelKey      // "fleetcert.e2e"
	labelFleet = labelKey + ".fleet" // the fleet name
	labelNode  = labelKey + ".node"
)

func init() {
	// There is no registry to pull testcontainers' reaper (ryuk) from; the
	// harness removes what it creates itself (Close, RemoveLeftovers). Set
	// before testcontainers reads its configuration on first use.
	os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
}

func dockerClient() (*client.Client, error) {
	return client.New(client.FromEnv, client.WithAPIVersionNegotiation())
}

// EngineAvailable reports whether a Docker engine answers, with the error
// that says why not.
func EngineAvailable(ctx context.Context) error {
	cli, err := dockerClient()
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = cli.Ping(ctx, client.PingOptions{})
	return err
}

// ExecResult is the outcome of a command run in a node container.
type ExecResult struct {
	Stdout   string
	Stderr   string
	ExitCode int
}

// Err turns a non-zero exit into an error carrying the output.
func (r ExecResult) Err() error {
	if r.ExitCode == 0 {
		return nil
	}
	return fmt.Errorf("exit status %d: %s", r.ExitCode, strings.TrimSpace(r.Stderr+"\n"+r.Stdout))
}

// execIn runs argv as root in the container and returns its output.
func execIn(ctx context.Context, cli *client.Client, id string, stdin []byte, argv ...string) (ExecResult, error) {
	created, err := cli.ExecCreate(ctx, id, client.ExecCreateOptions{
		User: "root", Cmd: argv, AttachStdout: true, AttachStderr: true, AttachStdin: stdin != nil,
	})
	if err != nil {
		return ExecResult{}, err
	}
	att, err := cli.ExecAttach(ctx, created.ID, client.ExecAttachOptions{})
	if err != nil {
		return ExecResult{}, err
	}
	defer att.Close()
	if stdin != nil {
		go func() {
			att.Conn.Write(stdin)
			att.CloseWrite()
		}()
	}
	var stdout, stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(&stdout, &stderr, att.Reader)
		done <- err
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
		return ExecResult{}, ctx.Err()
	}
	if err != nil {
		return ExecResult{}, err
	}
	insp, err := cli.ExecInspect(ctx, created.ID, client.ExecInspectOptions{})
	if err != nil {
		return ExecResult{}, err
	}
	return ExecResult{Stdout: stdout.String(), Stderr: stderr.String(), ExitCode: insp.ExitCode}, nil
}

// putFiles copies files into the container in one tar stream extracted at
// "/", so modes are exact and owners root; missing parent directories are
// created by the engine (0755).
//
// /run is a tmpfs in the node containers, and the engine's copy lands in
// the image layer under it, where nothing in the container sees it: files
// there are written by a shell inside the container instead.
func putFiles(ctx context.Context, cli *client.Client, id string, files []file) error {
	var layer []file
	for _, f := range files {
		if !onTmpfs(f.Path) {
			layer = append(layer, f)
			continue
		}
		if f.Mode == modeSymlink {
			return fmt.Errorf("write %s: no links under /run", f.Path)
		}
		r, err := execIn(ctx, cli, id, f.Data, "sh", "-c", `mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"`,
			"sh", f.Path, fmt.Sprintf("%o", f.Mode))
		if err == nil {
			err = r.Err()
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", f.Path, err)
		}
	}
	files = layer
	if len(files) == 0 {
		return nil
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	for _, f := range files {
		name := strings.TrimPrefix(f.Path, "/")
		if f.Mode == modeSymlink {
			// The engine replaces what is there (a file or another link).
			if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o777, ModTime: now, Typeflag: tar.TypeSymlink, Linkname: string(f.Data)}); err != nil {
				return err
			}
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: f.Mode, Size: int64(len(f.Data)), ModTime: now, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	_, err := cli.CopyToContainer(ctx, id, client.CopyToContainerOptions{DestinationPath: "/", Content: &buf})
	return err
}

// onTmpfs reports whether p is under /run, a tmpfs in the node containers.
func onTmpfs(p string) bool { return strings.HasPrefix(p, "/run/") }

// readFile reads one file from the container (docker cp, no shell needed;
// under /run, cat, for the reason putFiles gives).
func readFile(ctx context.Context, cli *client.Client, id, p string) ([]byte, error) {
	if onTmpfs(p) {
		r, err := execIn(ctx, cli, id, nil, "cat", "--", p)
		if err == nil {
			err = r.Err()
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
		return []byte(r.Stdout), nil
	}
	res, err := cli.CopyFromContainer(ctx, id, client.CopyFromContainerOptions{SourcePath: p})
	if err != nil {
		return nil, err
	}
	defer res.Content.Close()
	tr := tar.NewReader(res.Content)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil, fmt.Errorf("%s: not a regular file", p)
		} else if err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			return io.ReadAll(tr)
		}
		if h.Typeflag == tar.TypeSymlink {
			// docker cp of a symlink yields the link: follow it once.
			target := h.Linkname
			if !strings.HasPrefix(target, "/") {
				target = p[:strings.LastIndex(p, "/")+1] + target
			}
			return readFile(ctx, cli, id, target)
		}
	}
}

// freePort finds a TCP port on 127.0.0.1 that nothing listens on. The harness
// binds each node's sshd to a fixed host port (rather than letting Docker
// pick one) so that the port, and the inventory, survive a container restart.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
