module github.com/shylock-go/shylock

go 1.25
