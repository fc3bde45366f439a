module github.com/shylock-go/shylock/examples

go 1.25

require github.com/shylock-go/shylock v0.0.0

replace github.com/shylock-go/shylock => ../
