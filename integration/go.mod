module github.com/shylock-go/shylock/integration

go 1.25

require github.com/shylock-go/shylock v0.0.0

require go.uber.org/goleak v1.3.0

replace github.com/shylock-go/shylock => ../
