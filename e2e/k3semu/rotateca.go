package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ---- server side: PUT /v1-k3s/cert/cacerts ----

func (s *server) handleCACertReplace(w http.ResponseWriter, r *http.Request) {
	force, _ := strconv.ParseBool(r.URL.Query().Get("force"))
	var payload bootstrapData
	err := json.NewDecoder(io.LimitReader(r.Body, 16<<20)).Decode(&payload)
	if err == nil {
		err = s.caCertReplace(payload, force)
	}
	if err != nil {
		id := rand.Int32()
		s.log.Errorf("certificate error ID %d: %v", id, err)
		http.Error(w, fmt.Sprintf("certificate error ID %d", id), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// caCertReplace validates the supplied files against the current ones and
// saves the result to the datastore. Nothing on disk changes.
func (s *server) caCertReplace(payload bootstrapData, force bool) error {
	current, err := readBootstrapFromDisk(s.dir)
	if err != nil {
		return err
	}
	supplied := map[string][]byte{}
	merged := bootstrapData{}
	for _, f := range bootstrapFields {
		p, ok := payload[f.Name]
		if f.Rotatable && ok && len(p.Content) > 0 {
			supplied[f.Name] = p.Content
			merged[f.Name] = p
			continue
		}
		cur, ok := current[f.Name]
		if !ok {
			continue
		}
		s.log.Infof("Using current data for %s: %s", f.Name, filepath.Join(s.dir, f.Rel))
		merged[f.Name] = cur
	}
	if err := validateBootstrap(current, supplied, partialRotateBug(s.version)); err != nil {
		if !force {
			return fmt.Errorf("failed to validate new CA certificates and keys: %w", err)
		}
		s.log.Warnf("Save of CA certificates and keys forced, ignoring validation errors: %v", err)
	}
	unlock, err := s.ds.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := s.ds.saveBootstrap(s.password, merged); err != nil {
		return err
	}
	if rotateCARegeneratesServingCert(s.version) {
		// k3s #12978: only this server's serving cert is re-issued at its
		// next start (docs/k3s-behaviour.md#complete-cross-signed).
		if err := os.WriteFile(filepath.Join(s.tlsDir, servingCertTrigger), []byte{}, 0o600); err != nil {
			return err
		}
	}
	s.log.Infof("certificate: Cluster Certificate Authority data has been updated, k3s must be restarted.")
	return nil
}

// validateBootstrap applies k3s's rotate-ca checks (docs/k3s-behaviour.md#rotate-ca-validation) to every
// rotatable field, in k3s's field order. current holds the files on disk,
// supplied only the non-empty files sent. checkUntouched emulates releases
// before the fix for #10689, which also validated CA fields not supplied.
func validateBootstrap(current bootstrapData, supplied map[string][]byte, checkUntouched bool) error {
	effective := func(name string) []byte {
		if b, ok := supplied[name]; ok {
			return b
		}
		return current[name].Content
	}
	var errs []error
	for _, f := range bootstrapFields {
		if !f.Rotatable {
			continue
		}
		_, caChanged := supplied[f.Name]
		if strings.HasSuffix(f.Name, "CA") {
			if caChanged || checkUntouched {
				if err := validateCA(current[f.Name].Content, effective(f.Name)); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", f.Name, err))
				}
			}
			_, keyChanged := supplied[f.Name+"Key"]
			if caChanged || keyChanged {
				if err := validateCAKey(effective(f.Name), effective(f.Name+"Key")); err != nil {
					errs = append(errs, fmt.Errorf("%sKey: %w", f.Name, err))
				}
			}
		}
		if f.Name == "ServiceKey" {
			if err := validateServiceKey(current[f.Name].Content, effective(f.Name)); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", f.Name, err))
			}
		}
	}
	return aggregate(errs)
}

// aggregate formats several errors like Kubernetes' aggregate: one error
// as itself, several as "[a, b]".
func aggregate(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return errors.New("[" + strings.Join(msgs, ", ") + "]")
}

// validateCA: the new bundle must hold more than one cert and its first
// cert must chain to a root of the old bundle.
func validateCA(oldPEM, newPEM []byte) error {
	oldCerts, err := parseCertsPEM(oldPEM)
	if err != nil {
		return err
	}
	newCerts, err := parseCertsPEM(newPEM)
	if err != nil {
		return err
	}
	if len(newCerts) == 1 {
		return errors.New("new CA bundle contains only a single certificate but should include root or intermediate CA certificates")
	}
	roots := x509.NewCertPool()
	intermediates := x509.NewCertPool()
	for _, c := range oldCerts {
		if len(c.AuthorityKeyId) == 0 || bytes.Equal(c.AuthorityKeyId, c.SubjectKeyId) {
			roots.AddCert(c)
		} else {
			intermediates.AddCert(c)
		}
	}
	for _, c := range newCerts[1:] {
		if len(c.AuthorityKeyId) > 0 {
			intermediates.AddCert(c)
		}
	}
	if _, err := newCerts[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates}); err != nil {
		return fmt.Errorf("new CA cert cannot be verified using old CA chain: %w", err)
	}
	return nil
}

// validateCAKey: the first cert and the first private key must pair up.
func validateCAKey(certPEM, keyPEM []byte) error {
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("new CA cert and key cannot be loaded as X590KeyPair: %w", err)
	}
	return nil
}

// validateServiceKey: the first old signing key must be in the new list.
func validateServiceKey(oldPEM, newPEM []byte) error {
	oldKeys, err := parsePublicKeysPEM(oldPEM)
	if err != nil {
		return err
	}
	newKeys, err := parsePublicKeysPEM(newPEM)
	if err != nil {
		return err
	}
	for _, k := range newKeys {
		if publicKeysEqual(oldKeys[0], k) {
			return nil
		}
	}
	return errors.New("old ServiceAccount signing key not in new ServiceAccount key list")
}

// ---- CLI side: k3s certificate rotate-ca ----

var rotateCAFlags = []flagDef{
	{Name: "data-dir", Aliases: []string{"d"}, EnvVar: "K3S_DATA_DIR", Default: defaultDataDir},
	{Name: "server", Aliases: []string{"s"}, EnvVar: "K3S_URL", Default: defaultLocalURL},
	{Name: "path"},
	{Name: "force", Bool: true},
	{Name: "debug", Bool: true},
}

// readStagedBootstrap reads DIR/tls/... (never DIR itself), as k3s does.
func readStagedBootstrap(dir string, log *Logger) bootstrapData {
	data := bootstrapData{}
	for _, f := range bootstrapFields {
		path := os.DevNull
		if f.Rotatable {
			path = filepath.Join(dir, f.Rel)
		}
		info, err := os.Stat(path)
		if err != nil {
			log.Warnf("failed to stat %s: %v", f.Name, err)
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			log.Warnf("failed to read %s: %v", f.Name, err)
			continue
		}
		data[f.Name] = bootstrapFile{Timestamp: info.ModTime(), Content: b}
	}
	return data
}

func cmdRotateCA(e *Env, args []string) error {
	vals, err := resolveFlags(e, rotateCAFlags, args)
	if err != nil {
		return err
	}
	if vals["path"] == "" {
		return errors.New(`Required flag "path" not set`)
	}
	force, _ := strconv.ParseBool(vals["force"])
	tokenPath := filepath.Join(vals["data-dir"], "server", "token")
	tb, err := os.ReadFile(tokenPath)
	if err != nil {
		return err
	}
	tok, err := parseToken(strings.TrimSpace(string(tb)))
	if err != nil {
		return err
	}
	cacerts, err := validateServer(e.now, vals["server"], tok, e.Log)
	if err != nil {
		return err
	}
	body, err := json.Marshal(readStagedBootstrap(vals["path"], e.Log))
	if err != nil {
		return err
	}
	url := fmt.Sprintf("%s%s/cert/cacerts?force=%t", strings.TrimRight(vals["server"], "/"), e.routePrefix(), force)
	req, err := http.NewRequest(http.MethodPut, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.SetBasicAuth("server", tok.Password)
	client := tlsClient(e.now, &tls.Config{RootCAs: poolFromPEM(cacerts)})
	client.Timeout = 30 * time.Second
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("see server log for details: %w", err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("see server log for details: %s: %s %s", url, resp.Status, strings.TrimSpace(string(rb)))
	}
	fmt.Fprintln(e.Stdout, "certificates saved to datastore")
	return nil
}
