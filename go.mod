module github.com/shylock-go/shylock

go 1.25.0

require (
	github.com/arangodb/go-driver/v2 v2.4.1 // indirect
	go.mongodb.org/mongo-driver/v2 v2.10.0 // indirect
)
