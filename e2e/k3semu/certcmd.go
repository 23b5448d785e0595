package main

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"go.yaml.in/yaml/v3"
)

// serviceFiles are the leaf files of one service (docs/k3s-behaviour.md#certificate-rotate):
// Server relative to server/tls, Agent relative to agent/.
type serviceFiles struct {
	Server []string
	Agent  []string
}

func pair(stem string) []string { return []string{stem + ".crt", stem + ".key"} }

var serviceTable = map[string]serviceFiles{
	"admin":              {Server: pair("client-admin")},
	"api-server":         {Server: append(pair("client-kube-apiserver"), pair("serving-kube-apiserver")...)},
	"controller-manager": {Server: pair("client-controller")},
	"scheduler":          {Server: pair("client-scheduler")},
	"etcd":               {Server: append(append(pair("etcd/client"), pair("etcd/server-client")...), pair("etcd/peer-server-client")...)},
	"cloud-controller":   {Server: pair("client-k3s-cloud-controller")},
	"k3s-controller":     {Server: pair("client-k3s-controller"), Agent: pair("client-k3s-controller")},
	"supervisor":         {Server: pair("client-supervisor")},
	"auth-proxy":         {Server: pair("client-auth-proxy")},
	"kubelet":            {Server: []string{"client-kubelet.key", "serving-kubelet.key"}, Agent: append(pair("client-kubelet"), pair("serving-kubelet")...)},
	"kube-proxy":         {Server: pair("client-kube-proxy"), Agent: pair("client-kube-proxy")},
	"k3s-server":         {},
}

func serverServices(version string) []string {
	s := []string{"api-server", "admin", "auth-proxy", "cloud-controller", "controller-manager", "etcd", "scheduler"}
	if hasSupervisorCert(version) {
		s = append(s, "supervisor")
	}
	return append(s, "k3s-server")
}

var agentServices = []string{"kube-proxy", "kubelet", "k3s-controller"}

// selectServices resolves --service (comma separated, repeatable) against
// the known list; the default is all services on a server, the agent set
// on an agent.
func selectServices(version, flag string, isServer bool) ([]string, error) {
	all := append(serverServices(version), agentServices...)
	if strings.TrimSpace(flag) == "" {
		if isServer {
			return all, nil
		}
		return agentServices, nil
	}
	var out []string
	for _, s := range strings.Split(flag, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !containsString(all, s) {
			return nil, fmt.Errorf("service %s is not recognized", s)
		}
		out = append(out, s)
	}
	return out, nil
}

var certCmdFlags = []flagDef{
	{Name: "data-dir", Aliases: []string{"d"}, EnvVar: "K3S_DATA_DIR", Default: defaultDataDir},
	{Name: "service", Aliases: []string{"s"}, Multi: true},
	{Name: "output", Aliases: []string{"o"}, Default: "text"},
	{Name: "debug", Bool: true},
}

// ---- k3s certificate rotate ----

func cmdCertRotate(e *Env, args []string, now time.Time) error {
	vals, err := resolveFlags(e, certCmdFlags, args)
	if err != nil {
		return err
	}
	dataDir := vals["data-dir"]
	serverTLS := filepath.Join(dataDir, "server", "tls")
	agentDir := filepath.Join(dataDir, "agent")
	isServer := fileExists(filepath.Join(dataDir, "server"))
	services, err := selectServices(e.version(), e.k3sServiceNames(vals["service"]), isServer)
	if err != nil {
		return err
	}
	if e.prod().StaticPods {
		// rke2's own rotate leaves <data-dir>/force-restart: its next start
		// removes the control-plane static pods and runs them anew.
		if err := os.WriteFile(filepath.Join(dataDir, forceRestartFile), []byte{}, 0o600); err != nil {
			return err
		}
	}
	var backup string
	if isServer {
		backup = filepath.Join(dataDir, "server", fmt.Sprintf("tls-%d", now.Unix()))
		if err := copyTree(serverTLS, backup); err != nil {
			return fmt.Errorf("failed to back up certificates: %w", err)
		}
	} else {
		backup = filepath.Join(agentDir, fmt.Sprintf("tls-%d", now.Unix()))
		if err := os.MkdirAll(backup, 0o700); err != nil {
			return err
		}
	}
	var remove []string
	for _, svc := range services {
		e.Log.Infof("Rotating certificates for %s service", e.serviceName(svc))
		files := serviceTable[svc]
		for _, f := range files.Agent {
			src := filepath.Join(agentDir, f)
			if fileExists(src) {
				if err := copyFile(src, filepath.Join(backup, filepath.Base(f))); err != nil {
					return err
				}
			}
			remove = append(remove, src)
		}
		if isServer {
			for _, f := range files.Server {
				remove = append(remove, filepath.Join(serverTLS, f))
			}
		}
	}
	for _, f := range remove {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if isServer && containsString(services, "k3s-server") {
		if err := os.WriteFile(filepath.Join(serverTLS, servingCertTrigger), []byte{}, 0o600); err != nil {
			return err
		}
	}
	e.Log.Infof("Successfully backed up certificates to %s, please restart %s server or agent to rotate certificates", backup, e.prod().Name)
	return nil
}

func copyFile(src, dst string) error {
	info, err := os.Stat(src)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	return os.WriteFile(dst, b, info.Mode().Perm())
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		return copyFile(path, target)
	})
}

// ---- k3s certificate check ----

// certInfo is one row of `certificate check` (JSON field names as k3s).
type certInfo struct {
	Filename     string        `json:"Filename" yaml:"filename"`
	Subject      string        `json:"Subject" yaml:"subject"`
	Issuer       string        `json:"Issuer" yaml:"issuer"`
	Usages       []string      `json:"Usages" yaml:"usages"`
	ExpiryTime   time.Time     `json:"ExpiryTime" yaml:"expirytime"`
	ResidualTime time.Duration `json:"ResidualTime" yaml:"residualtime"`
	Status       string        `json:"Status" yaml:"status"`
}

type certInfoList struct {
	Certificates []certInfo `json:"Certificates" yaml:"certificates"`
}

func certUsages(c *x509.Certificate) []string {
	var u []string
	if c.IsCA {
		u = append(u, "CertSign")
	}
	for _, eku := range c.ExtKeyUsage {
		switch eku {
		case x509.ExtKeyUsageServerAuth:
			u = append(u, "ServerAuth")
		case x509.ExtKeyUsageClientAuth:
			u = append(u, "ClientAuth")
		default:
			u = append(u, "Unknown")
		}
	}
	return u
}

// collectCertInfo inspects every cert of every existing .crt file of the
// selected services.
func collectCertInfo(dataDir string, services []string, days int, now time.Time) ([]certInfo, error) {
	var files []string
	seen := map[string]bool{}
	add := func(p string) {
		if strings.HasSuffix(p, ".crt") && !seen[p] && fileExists(p) {
			seen[p] = true
			files = append(files, p)
		}
	}
	for _, svc := range services {
		for _, f := range serviceTable[svc].Server {
			add(filepath.Join(dataDir, "server", "tls", f))
		}
		for _, f := range serviceTable[svc].Agent {
			add(filepath.Join(dataDir, "agent", f))
		}
	}
	sort.Strings(files)
	var out []certInfo
	for _, f := range files {
		certs, err := certsFromFile(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		for _, c := range certs {
			ci := certInfo{Filename: f, Subject: c.Subject.CommonName, Issuer: c.Issuer.CommonName, Usages: certUsages(c), ExpiryTime: c.NotAfter.UTC()}
			switch {
			case now.Before(c.NotBefore):
				ci.Status, ci.ExpiryTime = "NOT YET VALID", c.NotBefore.UTC()
			case now.After(c.NotAfter):
				ci.Status = "EXPIRED"
			case c.NotAfter.Sub(now) < time.Duration(days)*24*time.Hour:
				ci.Status = "WARNING"
			default:
				ci.Status = "OK"
			}
			ci.ResidualTime = ci.ExpiryTime.Sub(now)
			out = append(out, ci)
		}
	}
	return out, nil
}

func cmdCertCheck(e *Env, args []string, now time.Time) error {
	flags := certCmdFlags
	if !hasCheckOutput(e.version()) {
		flags = slices.DeleteFunc(slices.Clone(flags), func(f flagDef) bool { return f.Name == "output" })
	}
	vals, err := resolveFlags(e, flags, args)
	if err != nil {
		return err
	}
	dataDir := vals["data-dir"]
	isServer := fileExists(filepath.Join(dataDir, "server"))
	services, err := selectServices(e.version(), e.k3sServiceNames(vals["service"]), isServer)
	if err != nil {
		return err
	}
	if e.prod().StaticPods {
		// rke2's own rotate leaves <data-dir>/force-restart: its next start
		// removes the control-plane static pods and runs them anew.
		if err := os.WriteFile(filepath.Join(dataDir, forceRestartFile), []byte{}, 0o600); err != nil {
			return err
		}
	}
	version := e.version()
	infos, err := collectCertInfo(dataDir, services, renewDays(version), now)
	if err != nil {
		return err
	}
	switch vals["output"] {
	case "text", "":
		for _, c := range infos {
			desc := fmt.Sprintf("%s: certificate %s (%s)", c.Filename, c.Subject, strings.Join(c.Usages, ","))
			switch c.Status {
			case "OK":
				e.Log.Infof("%s is ok, expires at %s", desc, c.ExpiryTime.Format(time.RFC3339))
			case "WARNING":
				e.Log.Warnf("%s will expire within %d days at %s", desc, renewDays(version), c.ExpiryTime.Format(time.RFC3339))
			case "EXPIRED":
				e.Log.Errorf("%s expired at %s", desc, c.ExpiryTime.Format(time.RFC3339))
			default:
				e.Log.Errorf("%s is not valid before %s", desc, c.ExpiryTime.Format(time.RFC3339))
			}
		}
	case "table":
		printCertTable(e.Stdout, infos)
	case "json":
		b, err := json.Marshal(certInfoList{Certificates: nonNil(infos)})
		if err != nil {
			return err
		}
		fmt.Fprintln(e.Stdout, string(b))
	case "yaml":
		b, err := yaml.Marshal(certInfoList{Certificates: nonNil(infos)})
		if err != nil {
			return err
		}
		fmt.Fprint(e.Stdout, string(b))
	default:
		return fmt.Errorf("invalid output format %s", vals["output"])
	}
	return nil
}

func nonNil(c []certInfo) []certInfo {
	if c == nil {
		return []certInfo{}
	}
	return c
}

func printCertTable(w io.Writer, infos []certInfo) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "FILENAME\tSUBJECT\tUSAGES\tEXPIRES\tRESIDUAL TIME\tSTATUS")
	fmt.Fprintln(tw, "--------\t-------\t------\t-------\t-------------\t------")
	for _, c := range infos {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", filepath.Base(c.Filename), c.Subject, strings.Join(c.Usages, ","),
			c.ExpiryTime.Format("Jan 02, 2006 15:04 MST"), humanResidual(c.ResidualTime), c.Status)
	}
	tw.Flush()
}

func humanResidual(d time.Duration) string {
	neg := ""
	if d < 0 {
		neg, d = "-", -d
	}
	days := int(d.Hours() / 24)
	if days >= 1 {
		return fmt.Sprintf("%s%dd", neg, days)
	}
	return fmt.Sprintf("%s%dh", neg, int(d.Hours()))
}
