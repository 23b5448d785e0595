// Package build makes the fleetcert e2e node images, locally and without any
// registry: a Debian bookworm rootfs from debootstrap (cached as a tarball),
// imported as a base image, plus a small Dockerfile layer holding the k3s
// emulator, the "fleet" SSH user and the sshd policy. There are two, one per
// init system a k3s node may run (Options.Init): systemd (the default) and
// OpenRC, as on Alpine (openrc/Dockerfile).
//
// Every step is keyed by a hash of its inputs, so Ensure is cheap when
// nothing changed: it rebuilds the emulator (Go's build cache makes that
// quick), hashes it, and finds the image already tagged.
//
// `go run ./e2e/image` calls Ensure; so does the e2e harness before it starts
// a fleet, which keeps the image and the emulator source in step.
package build

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/moby/moby/client"
)

// Image names. The node image is tagged with a content hash of its inputs;
// NodeLatest always points at the last one built, for hands-on use. The
// OpenRC image has repositories of its own.
const (
	BaseRepo   = "fleetcert-e2e-base"
	NodeRepo   = "fleetcert-e2e-node"
	NodeLatest = NodeRepo + ":latest"

	OpenRCBaseRepo   = "fleetcert-e2e-openrc-base"
	OpenRCNodeRepo   = "fleetcert-e2e-openrc-node"
	OpenRCNodeLatest = OpenRCNodeRepo + ":latest"

	// LabelKey marks every image, container, network and volume the e2e
	// tooling makes, so leftovers can be found and removed.
	LabelKey = "fleetcert.e2e"

	// EmulatorEnv names a prebuilt k3s binary to use instead of building
	// ./e2e/k3semu (for trying another emulator build).
	EmulatorEnv = "FLEETCERT_E2E_K3S"
)

// The init systems a node image can boot with (Options.Init).
const (
	Systemd = "systemd"
	OpenRC  = "openrc"
)

// Inits lists every init system there is an image for.
var Inits = []string{Systemd, OpenRC}

//go:embed Dockerfile nodefs openrc
var context_ embed.FS

// flavor is what differs between the images of the two init systems.
type flavor struct {
	init               string
	baseRepo, nodeRepo string
	latest             string
	packages           []string
	cleanup            string
	tarPrefix          string // of the cached rootfs tarball
	// dockerfile is the Dockerfile's path in context_; overlay, when set,
	// is a tree laid over nodefs/; skip drops the nodefs/ paths under
	// these prefixes (another init system's files).
	dockerfile string
	overlay    string
	skip       []string
}

var flavors = map[string]flavor{
	Systemd: {
		init: Systemd, baseRepo: BaseRepo, nodeRepo: NodeRepo, latest: NodeLatest,
		packages: packages, cleanup: cleanup, tarPrefix: "rootfs-",
		dockerfile: "Dockerfile",
	},
	OpenRC: {
		init: OpenRC, baseRepo: OpenRCBaseRepo, nodeRepo: OpenRCNodeRepo, latest: OpenRCNodeLatest,
		packages: openrcPackages, cleanup: cleanup, tarPrefix: "openrc-rootfs-",
		dockerfile: "openrc/Dockerfile", overlay: "openrc/nodefs", skip: []string{"nodefs/etc/systemd/"},
	},
}

func flavorOf(init string) (flavor, error) {
	if init == "" {
		init = Systemd
	}
	fl, ok := flavors[init]
	if !ok {
		return flavor{}, fmt.Errorf("no node image for init system %q (want %s)", init, strings.Join(Inits, " or "))
	}
	return fl, nil
}

// Options tunes Ensure. The zero value works from anywhere inside the repo.
type Options struct {
	// RepoRoot is the fleetcert module root; found from the working
	// directory when empty.
	RepoRoot string
	// CacheDir holds the rootfs tarball; $XDG_CACHE_HOME/fleetcert-e2e
	// (~/.cache/fleetcert-e2e) when empty.
	CacheDir string
	// Emulator is a prebuilt static k3s emulator; $FLEETCERT_E2E_K3S, else
	// built from ./e2e/k3semu with CGO_ENABLED=0.
	Emulator string
	// Logf receives progress lines; nil is silent.
	Logf func(format string, args ...any)
	// Init is the node's init system: Systemd (also when empty) or OpenRC.
	Init string
}

// Result tells what Ensure did.
type Result struct {
	Image    string // content-addressed tag of the node image
	Built    bool   // the node image was (re)built now
	Rootfs   string // cached rootfs tarball
	Timings  []Timing
	Emulator string // sha256 of the emulator binary in the image
}

// Timing is how long one step took.
type Timing struct {
	Step string
	Took time.Duration
}

func (r *Result) time(step string, start time.Time) {
	r.Timings = append(r.Timings, Timing{step, time.Since(start).Round(time.Millisecond)})
}

// Ensure makes sure the node image of o.Init for the current inputs exists
// and returns its tag.
func Ensure(ctx context.Context, o Options) (*Result, error) {
	fl, err := flavorOf(o.Init)
	if err != nil {
		return nil, err
	}
	logf := o.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if o.RepoRoot == "" {
		root, err := FindRepoRoot()
		if err != nil {
			return nil, err
		}
		o.RepoRoot = root
	}
	if o.CacheDir == "" {
		dir, err := DefaultCacheDir()
		if err != nil {
			return nil, err
		}
		o.CacheDir = dir
	}
	if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
		return nil, err
	}
	res := &Result{}

	cli, err := client.New(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	defer cli.Close()
	if _, err := cli.Ping(ctx, client.PingOptions{}); err != nil {
		return nil, fmt.Errorf("docker engine not reachable: %w", err)
	}

	// 1. The emulator binary.
	start := time.Now()
	emu, cleanupEmu, err := emulatorBinary(ctx, o)
	if err != nil {
		return nil, err
	}
	defer cleanupEmu()
	emuSum, err := fileSHA256(emu)
	if err != nil {
		return nil, err
	}
	res.Emulator = emuSum
	res.time("emulator build", start)

	// 2. The rootfs key, from the mirror the machine's apt uses.
	mirror, err := MirrorFromSources("/")
	if err != nil {
		return nil, err
	}
	ver, err := debootstrapVersion(ctx)
	if err != nil {
		// Without debootstrap a cached base image can still be used.
		ver = ""
	}

	ctxFiles, err := fl.contextFiles()
	if err != nil {
		return nil, err
	}
	var rootKey string
	if ver != "" {
		rootKey = fl.rootfsKey(mirror, ver)
	} else {
		// No debootstrap: reuse the newest base image there is, if any.
		rootKey, err = newestBaseKey(ctx, cli, fl.baseRepo)
		if err != nil {
			return nil, err
		}
	}
	baseTag := fl.baseRepo + ":" + rootKey[:16]
	res.Image = fl.nodeRepo + ":" + nodeKey(rootKey, ctxFiles, emuSum)[:16]

	if exists(ctx, cli, res.Image) {
		logf("image: %s is up to date", res.Image)
		if err := tag(ctx, cli, res.Image, fl.latest); err != nil {
			return nil, err
		}
		return res, nil
	}

	// 3. The base image, from the cached rootfs tarball.
	if !exists(ctx, cli, baseTag) {
		start = time.Now()
		tarball, _, err := fl.ensureRootfs(ctx, o.CacheDir, mirror, logf)
		if err != nil {
			return nil, err
		}
		res.Rootfs = tarball
		res.time("rootfs (debootstrap or cache)", start)
		start = time.Now()
		if err := importBase(ctx, cli, tarball, baseTag); err != nil {
			return nil, err
		}
		res.time("docker import", start)
		logf("image: imported %s", baseTag)
	}

	// 4. The node layer.
	start = time.Now()
	if err := buildNode(ctx, cli, baseTag, res.Image, ctxFiles, emu, logf); err != nil {
		return nil, err
	}
	res.time("docker build", start)
	res.Built = true
	if err := tag(ctx, cli, res.Image, fl.latest); err != nil {
		return nil, err
	}
	removeStale(ctx, cli, fl.nodeRepo, res.Image, fl.latest, logf)
	removeStale(ctx, cli, fl.baseRepo, baseTag, fl.latest, logf)
	// Node images that lost their tags while a fleet still ran on them.
	cli.ImagePrune(ctx, client.ImagePruneOptions{Filters: make(client.Filters).Add("dangling", "true").Add("label", LabelKey)})
	logf("image: built %s", res.Image)
	return res, nil
}

// FindRepoRoot walks up from the working directory to the go.mod of the
// fleetcert module.
func FindRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(data, []byte("module github.com/fleetcert/fleetcert\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the fleetcert repository (no go.mod of github.com/fleetcert/fleetcert above the working directory)")
		}
		dir = parent
	}
}

// DefaultCacheDir is $XDG_CACHE_HOME/fleetcert-e2e, i.e. ~/.cache/fleetcert-e2e.
func DefaultCacheDir() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "fleetcert-e2e"), nil
}

// emulatorBinary returns a static k3s emulator binary and a cleanup func.
func emulatorBinary(ctx context.Context, o Options) (string, func(), error) {
	if o.Emulator == "" {
		o.Emulator = os.Getenv(EmulatorEnv)
	}
	if o.Emulator != "" {
		return o.Emulator, func() {}, nil
	}
	dir, err := os.MkdirTemp(o.CacheDir, "k3semu-")
	if err != nil {
		return "", nil, err
	}
	out := filepath.Join(dir, "k3s")
	// -trimpath and -buildvcs=false make the binary depend on the emulator's
	// source only, so edits elsewhere in the repo do not force a new image.
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-o", out, "./e2e/k3semu")
	cmd.Dir = o.RepoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("building the k3s emulator (CGO_ENABLED=0 go build ./e2e/k3semu): %w\n%s", err, msg)
	}
	return out, func() { os.RemoveAll(dir) }, nil
}

type ctxFile struct {
	path string // inside the build context
	data []byte
}

// contextFiles is the flavor's build context: its Dockerfile as
// "Dockerfile", and nodefs/ (less the skipped paths) with its overlay laid
// over it. For systemd that is exactly the embedded Dockerfile and nodefs/,
// so its node key is what it always was.
func (fl flavor) contextFiles() ([]ctxFile, error) {
	byPath := map[string][]byte{}
	df, err := context_.ReadFile(fl.dockerfile)
	if err != nil {
		return nil, err
	}
	byPath["Dockerfile"] = df
	walk := func(root, as string) error {
		return fs.WalkDir(context_, root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			name := as + strings.TrimPrefix(p, root)
			for _, s := range fl.skip {
				if strings.HasPrefix(name, s) {
					return nil
				}
			}
			data, err := context_.ReadFile(p)
			byPath[name] = data
			return err
		})
	}
	if err := walk("nodefs", "nodefs"); err != nil {
		return nil, err
	}
	if fl.overlay != "" {
		if err := walk(fl.overlay, "nodefs"); err != nil {
			return nil, err
		}
	}
	var files []ctxFile
	for p, data := range byPath {
		files = append(files, ctxFile{p, data})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].path < files[j].path })
	return files, nil
}

// nodeKey hashes everything the node image is made of.
func nodeKey(rootKey string, files []ctxFile, emuSum string) string {
	h := sha256.New()
	fmt.Fprintf(h, "rootfs=%s\nemulator=%s\n", rootKey, emuSum)
	for _, f := range files {
		s := sha256.Sum256(f.data)
		fmt.Fprintf(h, "%s=%x\n", f.path, s)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func exists(ctx context.Context, cli *client.Client, ref string) bool {
	_, err := cli.ImageInspect(ctx, ref)
	return err == nil
}

func tag(ctx context.Context, cli *client.Client, src, dst string) error {
	if _, err := cli.ImageTag(ctx, client.ImageTagOptions{Source: src, Target: dst}); err != nil {
		return fmt.Errorf("docker tag %s %s: %w", src, dst, err)
	}
	return nil
}

func newestBaseKey(ctx context.Context, cli *client.Client, baseRepo string) (string, error) {
	list, err := cli.ImageList(ctx, client.ImageListOptions{Filters: make(client.Filters).Add("reference", baseRepo)})
	if err != nil {
		return "", err
	}
	var newest int64 = -1
	key := ""
	for _, im := range list.Items {
		for _, t := range im.RepoTags {
			if k, ok := strings.CutPrefix(t, baseRepo+":"); ok && im.Created > newest {
				newest, key = im.Created, k
			}
		}
	}
	if key == "" {
		return "", errors.New("debootstrap is not installed and there is no " + baseRepo + " image to reuse: apt-get install -y debootstrap")
	}
	return key, nil
}

func importBase(ctx context.Context, cli *client.Client, tarball, ref string) error {
	f, err := os.Open(tarball)
	if err != nil {
		return err
	}
	defer f.Close()
	resp, err := cli.ImageImport(ctx, client.ImageImportSource{Source: f, SourceName: "-"}, ref,
		client.ImageImportOptions{Changes: []string{"LABEL " + LabelKey + "=base"}})
	if err != nil {
		return fmt.Errorf("docker import: %w", err)
	}
	defer resp.Close()
	return readStream(resp, nil)
}

func buildNode(ctx context.Context, cli *client.Client, base, ref string, files []ctxFile, emu string, logf func(string, ...any)) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, f := range files {
		if err := add(f.path, 0o644, f.data); err != nil {
			return err
		}
	}
	bin, err := os.ReadFile(emu)
	if err != nil {
		return err
	}
	if err := add("k3s", 0o755, bin); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	resp, err := cli.ImageBuild(ctx, &buf, client.ImageBuildOptions{
		Tags:        []string{ref},
		Remove:      true,
		ForceRemove: true,
		BuildArgs:   map[string]*string{"BASE": &base},
		Labels:      map[string]string{LabelKey: "node"},
	})
	if err != nil {
		return fmt.Errorf("docker build: %w", err)
	}
	defer resp.Body.Close()
	var log bytes.Buffer
	if err := readStream(resp.Body, &log); err != nil {
		return fmt.Errorf("%w\n%s", err, tail(log.String(), 40))
	}
	return nil
}

// readStream drains a JSON message stream of the engine, copying "stream"
// text to w and returning the first error message.
func readStream(r io.Reader, w io.Writer) error {
	dec := json.NewDecoder(r)
	for {
		var m struct {
			Stream string `json:"stream"`
			Error  string `json:"error"`
		}
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if w != nil {
			io.WriteString(w, m.Stream)
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
	}
}

// staleAfter is how old another content-hash tag must be before
// removeStale drops it. Another checkout on the same engine (a worktree
// whose emulator differs) may have just built it for a fleet it is about
// to start: removing it between its Ensure and its containers' creation
// makes the engine try to pull it from a registry, and fail.
const staleAfter = time.Hour

// removeStale drops older content-hash tags of repo so that they do not
// pile up; an image still used by a container stays (no force), and so
// does one built less than staleAfter ago.
func removeStale(ctx context.Context, cli *client.Client, repo, keep, latest string, logf func(string, ...any)) {
	list, err := cli.ImageList(ctx, client.ImageListOptions{Filters: make(client.Filters).Add("reference", repo)})
	if err != nil {
		return
	}
	for _, im := range list.Items {
		if time.Since(time.Unix(im.Created, 0)) < staleAfter {
			continue
		}
		for _, t := range im.RepoTags {
			if t == keep || t == latest || !strings.HasPrefix(t, repo+":") {
				continue
			}
			if _, err := cli.ImageRemove(ctx, t, client.ImageRemoveOptions{}); err == nil {
				logf("image: removed stale %s", t)
			}
		}
	}
}
