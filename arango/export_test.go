package arango

// ListQuery lets the external tests ask a server how it runs the list query.
func ListQuery(b *Backend, prefix string) (string, map[string]any) {
	q := b.listQuery(prefix)
	return q.text, q.bind
}
