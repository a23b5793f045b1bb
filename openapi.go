package bearer

import (
	"context"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// HandleRequest is the framework's, with the OpenAPI document of help requests made to
// survive Vault: Vault decodes an external plugin's document with mapstructure, which
// drops every $ref, so the request and response schemas are written inline.
func (b *backend) HandleRequest(ctx context.Context, req *logical.Request) (*logical.Response, error) {
	resp, err := b.Backend.HandleRequest(ctx, req)
	if req.Operation == logical.HelpOperation && resp != nil {
		if doc, ok := resp.Data["openapi"].(*framework.OASDocument); ok {
			inlineSchemas(doc)
		}
	}
	return resp, err
}

// inlineSchemas replaces the $refs to components/schemas by the schemas, and leaves out
// query parameters from operations that do not take them (min_ttl of creds delete).
func inlineSchemas(doc *framework.OASDocument) {
	resolve := func(s *framework.OASSchema) *framework.OASSchema {
		if s == nil || s.Ref == "" {
			return s
		}
		if found, ok := doc.Components.Schemas[strings.TrimPrefix(s.Ref, "#/components/schemas/")]; ok {
			return found
		}
		return s
	}
	for path, item := range doc.Paths {
		for _, op := range []*framework.OASOperation{item.Get, item.Post, item.Delete} {
			if op == nil {
				continue
			}
			if op.RequestBody != nil {
				for _, mt := range op.RequestBody.Content {
					mt.Schema = resolve(mt.Schema)
				}
			}
			for _, r := range op.Responses {
				for _, mt := range r.Content {
					mt.Schema = resolve(mt.Schema)
				}
			}
		}
		if strings.HasPrefix(path, "/creds/") && item.Delete != nil {
			kept := item.Delete.Parameters[:0]
			for _, p := range item.Delete.Parameters {
				if p.In != "query" {
					kept = append(kept, p)
				}
			}
			item.Delete.Parameters = kept
		}
	}
	// The list responses keep their standard component, which Vault knows itself.
	for name := range doc.Components.Schemas {
		if name != "StandardListResponse" {
			delete(doc.Components.Schemas, name)
		}
	}
}
